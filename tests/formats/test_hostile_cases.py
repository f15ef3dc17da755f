"""Issue 12's categories, rebuilt by tests/hostile_cases.py: code-running pickles are reported by
what they would run and never run; malformed inputs cost one line on their file, never the scan."""

from __future__ import annotations

from pathlib import Path

import pytest
from hostile_cases import Case, all_cases, check

from ckpttui.inventory import report_dict, scan

CASES = [c for c in all_cases() if not c.big]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_case_is_reported_and_harmless(tmp_path: Path, case: Case) -> None:
    assert check(case, tmp_path, tmp_path / "pwned") is None


def test_every_issue_category_is_covered() -> None:
    names = " ".join(c.name for c in all_cases())
    for needle in (
        "getattr",
        "methodcaller",
        "partial",
        "dotted",
        "legacy payload in magic",
        "two data.pkl",
        "protocol 0",
        "parse error",
        "CRC",
        "encrypted",
        "bomb",
        "FIFO",
        "/dev/zero",
        "alias bomb",
        "DAG",
        "refs to one tensor",
        "bytearray",
        "LONG_BINPUT",
        "string offset",
        "overlapping",
    ):
        assert needle in names, needle


@pytest.mark.parametrize("fixture", ["hf_root", "ds_root", "tk_root"])
def test_real_checkpoints_are_not_flagged(fixture: str, request: pytest.FixtureRequest) -> None:
    root: Path = request.getfixturevalue(fixture)
    report = report_dict(scan(root))
    flagged = {
        f["path"]: f["error"] for f in report["files"] if f["error"] and "would run" in f["error"]
    }
    assert flagged == {}
    assert not any(c["info"].get("dangerous") for c in report["checkpoints"])
