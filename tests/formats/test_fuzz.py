"""A short seeded fuzz run over every reader and sidecar parser (the long one: ./dev fuzz)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from fuzz_readers import fuzz


def test_fuzzed_files_raise_only_the_projects_error_types(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # seeds and inputs under tmp_path
    result = fuzz(iterations=500, seed=12)
    assert result["tried"] == 500
    problems = {p: (t, len(d)) for p, (t, d) in result["problems"].items()}
    assert problems == {}, "exception types escaped (or a hang) on fuzzed files"
