"""AtomicOutput (temp beside the target, fsync, rename, refusals) and the event vocabulary."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from ckpttui.jobs.atomic import AtomicOutput, sha256_file
from ckpttui.jobs.events import Event, JobCancelled, JobError, ProgressClock, check_cancel, drive


def test_file_is_renamed_into_place(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with AtomicOutput(target) as temp:
        assert temp.parent == tmp_path and temp.name.startswith("out.bin.tmp-")
        temp.write_bytes(b"hello")
        assert not target.exists()
    assert target.read_bytes() == b"hello"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert sha256_file(target) == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_failure_removes_the_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), AtomicOutput(target) as temp:
        temp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


ST_EMPTY = (24).to_bytes(8, "little") + b'{"__metadata__":{}}     '
"""A valid safetensors file with no tensors (a new output must read back before it replaces)."""


def test_existing_target_needs_force(tmp_path: Path) -> None:
    target = tmp_path / "out.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(JobError, match=r"out\.safetensors exists \(pass --force"):
        AtomicOutput(target).check()
    with AtomicOutput(target, force=True) as temp:
        temp.write_bytes(ST_EMPTY)
    assert target.read_bytes() == ST_EMPTY


def test_folder_output_replaces_an_old_folder(tmp_path: Path) -> None:
    target = tmp_path / "shards"
    target.mkdir()
    (target / "stale.safetensors").write_bytes(b"x")
    with AtomicOutput(target, force=True, folder=True) as temp:
        assert temp.is_dir()
        (temp / "a.safetensors").write_bytes(ST_EMPTY)
    assert sorted(p.name for p in target.iterdir()) == ["a.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]


def test_refuses_inputs_by_name_by_inode_and_by_folder(tmp_path: Path) -> None:
    src = tmp_path / "in" / "a.pt"
    src.parent.mkdir()
    src.write_bytes(b"data")
    link = tmp_path / "link.pt"
    os.link(src, link)
    for target in (src, link, tmp_path / "in" / "." / "a.pt"):
        with pytest.raises(JobError, match="refusing to overwrite an input"):
            AtomicOutput(target, inputs=[src], force=True).check()
    with pytest.raises(JobError, match="holds an input"):
        AtomicOutput(tmp_path / "in", inputs=[src], force=True, folder=True).check()
    assert src.read_bytes() == b"data"


def test_free_space_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=123))
    with pytest.raises(JobError, match=r"needs 2\.0 KiB \(2048 bytes\), 123 B \(123 bytes\)"):
        AtomicOutput(tmp_path / "o.bin", estimate=2048).check()
    AtomicOutput(tmp_path / "o.bin", estimate=100).check()


def test_missing_parent_folder(tmp_path: Path) -> None:
    with pytest.raises(JobError, match="does not exist"):
        AtomicOutput(tmp_path / "nope" / "o.bin").check()


def test_event_json_round_trip() -> None:
    event = Event("done", "merge", 10, 10, "verified: 1 tensors", {"sha256": {"a": "b"}})
    line = event.to_json()
    assert "\n" not in line and Event.from_json(line) == event
    assert event.fraction == 1.0
    with pytest.raises(ValueError):
        Event.from_json('{"kind": "nope"}')


def test_progress_clock_batches_in_time() -> None:
    now = [0.0]
    clock = ProgressClock("merge", 100, interval=0.1, clock=lambda: now[0])
    assert clock.tick(10) is None  # too soon
    now[0] = 0.05
    assert clock.tick(20) is None
    now[0] = 0.11
    event = clock.tick(30)
    assert event is not None and (event.kind, event.bytes_done, event.bytes_total) == (
        "progress",
        30,
        100,
    )
    assert clock.flush() is None  # nothing new since
    assert clock.tick(90) is None
    last = clock.flush()
    assert last is not None and last.bytes_done == 90  # the last one always comes out


def test_cancel_and_drive() -> None:
    flag = threading.Event()
    check_cancel(None)
    check_cancel(flag)
    flag.set()
    with pytest.raises(JobCancelled):
        check_cancel(flag)

    def job():  # type: ignore[no-untyped-def]
        yield Event("start", "x")
        raise JobError("/a/b.pt: broken")

    events = list(drive(job(), "x"))
    assert [e.kind for e in events] == ["start", "error"]
    assert events[-1].message == "/a/b.pt: broken" and events[-1].data == {"cancelled": False}


def test_jobs_import_neither_torch_nor_ui() -> None:
    """torch is imported inside job functions only; nothing under jobs imports textual or rich."""
    import json
    import subprocess
    import sys

    modules = ["events", "atomic", "source", "st_writer", "pt_writer", "output", "zero", "merge"]
    probe = (
        "import json, sys\n"
        + "".join(f"import ckpttui.jobs.{m}\n" for m in modules)
        + "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    src = str(Path(__file__).resolve().parents[2] / "src")
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": src},
        check=True,
    )
    loaded = set(json.loads(proc.stdout))
    assert not loaded & {"torch", "numpy", "textual", "rich", "safetensors", "deepspeed"}
