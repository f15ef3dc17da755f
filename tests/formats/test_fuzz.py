"""A short seeded fuzz run over every reader and sidecar parser (the long one: ./dev fuzz)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from fuzz_readers import fuzz, run_one


def test_fuzzed_files_raise_only_the_projects_error_types(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # seeds and inputs under tmp_path
    result = fuzz(iterations=500, seed=12)
    assert result["tried"] == 500
    problems = {p: (t, len(d)) for p, (t, d) in result["problems"].items()}
    assert problems == {}, "exception types escaped (or a hang) on fuzzed files"


REGRESSIONS = Path(__file__).parents[1] / "data" / "fuzz"


@pytest.mark.parametrize("case", sorted(REGRESSIONS.glob("*.bin")), ids=lambda p: p.stem)
def test_inputs_the_fuzzers_once_broke_are_handled(case: Path, tmp_path: Path) -> None:
    """Inputs found by `./dev fuzz` or the seeded mutator, named TARGET--what.bin."""
    target = case.stem.split("--")[0]
    assert run_one(target, case.read_bytes(), tmp_path) is None
