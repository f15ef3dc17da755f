"""The child job's stderr never blocks it: a chatty child still reports its events."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from ckpttui.jobs.runner import ChildJob, JobSpec


def test_a_child_writing_200kb_to_stderr_does_not_deadlock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # sitecustomize runs in the child before the job: 200 KB on stderr is 3x a pipe buffer.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\nfor i in range(4000):\n    sys.stderr.write(f'warning {i:05d} ' + 'x' * 40 + '\\n')\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(site))
    job = ChildJob(
        JobSpec("export", {"src": str(tmp_path / "missing.pt"), "out": str(tmp_path / "o.pt")})
    )
    events: list = []
    reader = threading.Thread(target=lambda: events.extend(job.events()), daemon=True)
    reader.start()
    reader.join(timeout=120)
    if reader.is_alive():
        job.proc.kill()
        pytest.fail("the child blocked on a full stderr pipe")
    assert events and events[-1].kind == "error"
    assert "missing.pt" in events[-1].message
    assert not (tmp_path / "o.pt").exists()
