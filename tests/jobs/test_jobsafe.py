"""Jobs never replace what they did not check: locks, no-replace commits, --force, signals, owners.

The end-to-end tests run the real CLI in a child process whose safetensors writer waits at a
gate after each tensor, so the test acts while the job is provably mid-write (no timing).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import SRC, inspect_json, run_cli

from ckpttui.jobs import atomic
from ckpttui.jobs.atomic import AtomicOutput
from ckpttui.jobs.events import JobError
from ckpttui.jobs.owner import LockOwner, lock_path, temp_status

GATE = r"""
import sys, time
from pathlib import Path

gate = Path(sys.argv[1])
from ckpttui.jobs import st_writer

orig = st_writer.SafetensorsWriter.write


def write(self, name, tensor):
    n = orig(self, name, tensor)
    (gate / "writing").touch()
    for _ in range(3000):
        if (gate / "go").exists():
            break
        time.sleep(0.05)
    return n


st_writer.SafetensorsWriter.write = write
if sys.argv[2] == "runner":
    from ckpttui.jobs.runner import main
    sys.exit(main(sys.argv[3:]))
from ckpttui.cli import main
sys.exit(main(sys.argv[2:]))
"""


class Gated:
    """A job in a child process that stops after its first tensor until `go` is called."""

    def __init__(self, gate: Path, *args: str) -> None:
        gate.mkdir(parents=True, exist_ok=True)
        self.gate = gate
        env = dict(os.environ)
        env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", GATE, str(gate), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_writing(self) -> None:
        """Until the job has written a tensor into its temporary output."""
        while not (self.gate / "writing").exists():
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                pytest.fail(f"job ended before writing: {err}")
            time.sleep(0.02)

    def go(self) -> None:
        (self.gate / "go").touch()

    def finish(self) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=300)
        return self.proc.returncode, out, err


def _clean(folder: Path, answer: str) -> subprocess.CompletedProcess[str]:
    """``ckpttui clean FOLDER``, answering its question."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "ckpttui", "clean", str(folder)],
        input=answer,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or p.name.endswith(".lock"))


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small safetensors checkpoint of four tensors."""
    import torch
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("src") / "model.safetensors"
    save_file(
        {f"layer{i}.weight": torch.full((64, 64), float(i)) for i in range(4)},
        path,
        metadata={"format": "pt"},
    )
    return path


def _tensors(path: Path) -> dict[str, list[float]]:
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    out: dict[str, list[float]] = {}
    for f in files:
        out.update({k: v.flatten()[:2].tolist() for k, v in load_file(f).items()})
    return out


SHARDED = ("--max-shard-size", "20KB")


# --------------------------------------------------------------------- two jobs, one output


@pytest.mark.parametrize("sharded", [False, True], ids=["file", "sharded"])
def test_second_job_on_one_output_is_refused_naming_the_first(
    src: Path, tmp_path: Path, sharded: bool
) -> None:
    out = tmp_path / ("shards" if sharded else "out.safetensors")
    extra = SHARDED if sharded else ()
    first = Gated(tmp_path / "gate", "export", str(src), "-o", str(out), *extra)
    first.wait_writing()
    second = run_cli("export", str(src), "-o", str(out), "--force", *extra)
    assert second.returncode == 1
    line = _one_line(second.stderr)
    assert f"pid {first.pid}" in line and str(out) in line and "another job" in line
    first.go()
    code, _, err = first.finish()
    assert code == 0, err
    assert _tensors(out) == _tensors(src)  # the first job's verified output, intact
    assert _leftovers(tmp_path) == []


# --------------------------------------------------------------------- created meanwhile


@pytest.mark.parametrize("sharded", [False, True], ids=["file", "folder"])
def test_what_appears_at_the_output_during_the_job_is_kept(
    src: Path, tmp_path: Path, sharded: bool
) -> None:
    out = tmp_path / ("shards" if sharded else "out.safetensors")
    job = Gated(
        tmp_path / "gate", "export", str(src), "-o", str(out), *(SHARDED if sharded else ())
    )
    job.wait_writing()
    if sharded:
        out.mkdir()
        (out / "mine.txt").write_text("precious")
    else:
        out.write_text("precious")
    job.go()
    code, _, err = job.finish()
    assert code == 1
    line = _one_line(err)
    assert str(out) in line and "appeared there while this job ran" in line
    assert (out / "mine.txt" if sharded else out).read_text() == "precious"
    assert _leftovers(tmp_path) == []


def test_force_refuses_when_the_old_output_changed_during_the_job(
    src: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.safetensors"
    out.write_text("old")
    job = Gated(tmp_path / "gate", "export", str(src), "-o", str(out), "--force")
    job.wait_writing()
    out.write_text("changed by someone else")
    job.go()
    code, _, err = job.finish()
    assert code == 1
    assert "changed while this job ran" in _one_line(err)
    assert out.read_text() == "changed by someone else"
    assert _leftovers(tmp_path) == []


def test_force_replaces_an_unchanged_old_output(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    out.mkdir()
    (out / "stale.safetensors").write_text("old")
    proc = run_cli("export", str(src), "-o", str(out), "--force", *SHARDED)
    assert proc.returncode == 0, proc.stderr
    assert not (out / "stale.safetensors").exists() and _tensors(out) == _tensors(src)
    assert _leftovers(tmp_path) == []


# --------------------------------------------------------------------- signals


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signal_to_the_cli_leaves_nothing(src: Path, tmp_path: Path, signum: int) -> None:
    out = tmp_path / "out.safetensors"
    job = Gated(tmp_path / "gate", "export", str(src), "-o", str(out))
    job.wait_writing()
    assert any(".tmp-" in p.name for p in tmp_path.iterdir())
    job.proc.send_signal(signum)
    code, _, err = job.finish()
    assert code == 128 + signum, err
    assert "interrupted" in err and "Traceback" not in err
    assert not out.exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_signal_to_the_child_runner_leaves_nothing(src: Path, tmp_path: Path, signum: int) -> None:
    out = tmp_path / "out.safetensors"
    spec = json.dumps({"kind": "export", "args": {"src": str(src), "out": str(out)}})
    job = Gated(tmp_path / "gate", "runner", spec)
    job.wait_writing()
    job.proc.send_signal(signum)
    job.go()  # the cancel is seen at the next tensor
    code, stdout, _ = job.finish()
    last = json.loads(stdout.splitlines()[-1])
    assert code == 1 and last["kind"] == "error" and last["data"]["cancelled"] is True
    assert not out.exists() and _leftovers(tmp_path) == []


# --------------------------------------------------------------------- owners


def test_kill_9_then_inspect_says_abandoned_and_clean_removes_it(src: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out.safetensors"
    job = Gated(tmp_path / "gate", "export", str(src), "-o", str(out))
    job.wait_writing()
    (temp,) = [p.name for p in work.iterdir() if ".tmp-" in p.name]
    assert temp.startswith(f"out.safetensors.tmp-{job.pid}-")
    ckpt = {c["path"]: c for c in inspect_json(work)["checkpoints"]}[temp]
    assert ckpt["problems"] == [f"still being written by pid {job.pid}"]
    job.proc.kill()
    job.finish()
    ckpt = {c["path"]: c for c in inspect_json(work)["checkpoints"]}[temp]
    assert ckpt["complete"] is False
    assert ckpt["problems"][0].startswith(f"abandoned by pid {job.pid} (no longer running)")
    assert _leftovers(work) == sorted([temp, "out.safetensors.lock"])

    refused = _clean(work, "n\n")
    assert refused.returncode == 1 and temp in refused.stdout
    assert _leftovers(work) == sorted([temp, "out.safetensors.lock"])
    proc = _clean(work, "y\n")
    assert proc.returncode == 0, proc.stderr
    assert "removed 2 of 2" in proc.stdout and _leftovers(work) == []
    assert inspect_json(work)["checkpoints"] == []


def test_running_job_is_never_cleaned(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.safetensors"
    job = Gated(tmp_path / "gate", "export", str(src), "-o", str(out))
    job.wait_writing()
    proc = run_cli("clean", str(tmp_path), "--yes")
    assert proc.returncode == 0 and "nothing to clean" in proc.stdout
    job.go()
    assert job.finish()[0] == 0
    assert _tensors(out) == _tensors(src)


def test_temp_status(tmp_path: Path) -> None:
    target = tmp_path / "a.safetensors"
    with AtomicOutput(target) as temp:
        status = temp_status(temp)
        assert status is not None and status.state == "running" and status.pid == os.getpid()
        # a lock that names another host: we cannot tell from here
        lock = lock_path(target)
        real = lock.read_text()
        lock.write_text(LockOwner(os.getpid(), "elsewhere-host", 0.0, temp.name).to_json())
        status = temp_status(temp)
        assert status is not None and status.message == (
            f"being written by pid {os.getpid()} on host elsewhere-host"
        )
        lock.write_text(real)
        temp.write_bytes((24).to_bytes(8, "little") + b'{"__metadata__":{}}     ')
    assert temp_status(tmp_path / "a.safetensors") is None
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    pid = int(dead.stdout)
    orphan = tmp_path / f"b.pt.tmp-{pid}-0123abcd"
    orphan.write_bytes(b"x")
    status = temp_status(orphan)
    assert status is not None and status.state == "abandoned"  # no lock names it
    lock_path(tmp_path / "b.pt").write_text(
        LockOwner(pid, os.uname().nodename, time.time(), orphan.name).to_json()
    )
    status = temp_status(orphan)
    assert status is not None and status.state == "abandoned"  # its pid is gone


# --------------------------------------------------------------------- disk full


def test_disk_full_names_the_output(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ckpttui.jobs import st_writer
    from ckpttui.jobs.runner import JobSpec, run_spec

    real = st_writer.SafetensorsWriter._emit
    calls = []

    def emit(self, data):  # type: ignore[no-untyped-def]
        calls.append(len(data))
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write(2) raises it
        return real(self, data)

    monkeypatch.setattr(st_writer.SafetensorsWriter, "_emit", emit)
    out = tmp_path / "out.safetensors"
    events = list(run_spec(JobSpec("export", {"src": str(src), "out": str(out)})))
    assert events[-1].kind == "error"
    assert events[-1].message.startswith(f"{out}: cannot write the output: No space left")
    assert _leftovers(tmp_path) == [] and not out.exists()


@pytest.fixture
def tiny_fs(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A 1 MiB tmpfs (root only; skipped where mounting is not allowed)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr!r}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_real_disk_full_on_a_tiny_tmpfs_names_the_output(
    tmp_path: Path, tiny_fs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from safetensors.torch import save_file

    from ckpttui.jobs.runner import JobSpec, run_spec

    big = tmp_path / "big.safetensors"
    save_file({f"w{i}": torch.zeros(64, 1024) for i in range(6)}, big)  # 1.5 MiB
    # as if the disk filled up after the free-space check: the ENOSPC comes from the kernel
    monkeypatch.setattr(atomic, "check_free_space", lambda *args: None)
    out = tiny_fs / "out.safetensors"
    last = list(run_spec(JobSpec("export", {"src": str(big), "out": str(out)})))[-1]
    assert last.kind == "error"
    assert last.message.startswith(f"{out}: cannot write the output: No space left on device")
    assert list(tiny_fs.iterdir()) == []


# --------------------------------------------------------------------- AtomicOutput directly


@pytest.fixture(params=[True, False], ids=["renameat2", "portable"])
def renames(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    monkeypatch.setattr(atomic, "USE_RENAMEAT2", request.param)
    return bool(request.param)


ST = (24).to_bytes(8, "little") + b'{"__metadata__":{}}     '


def test_commit_never_replaces_a_file_made_meanwhile(tmp_path: Path, renames: bool) -> None:
    target = tmp_path / "o.safetensors"
    with pytest.raises(JobError, match="a file appeared there"), AtomicOutput(target) as temp:
        temp.write_bytes(ST)
        target.write_text("theirs")
    assert target.read_text() == "theirs" and _leftovers(tmp_path) == []


def test_commit_never_replaces_a_folder_made_meanwhile(tmp_path: Path, renames: bool) -> None:
    target = tmp_path / "out"
    with (
        pytest.raises(JobError, match="a folder appeared there"),
        AtomicOutput(target, folder=True) as temp,
    ):
        (temp / "model.safetensors").write_bytes(ST)
        target.mkdir()
        (target / "theirs").write_text("x")
    assert (target / "theirs").read_text() == "x" and _leftovers(tmp_path) == []


def test_force_swap_checks_identity(tmp_path: Path, renames: bool) -> None:
    target = tmp_path / "o.safetensors"
    target.write_text("old")
    with pytest.raises(JobError, match="changed while"), AtomicOutput(target, force=True) as t:
        t.write_bytes(ST)
        os.unlink(target)
        target.write_text("old")  # same content, another file
    assert target.read_text() == "old" and _leftovers(tmp_path) == []
    with AtomicOutput(target, force=True) as temp:
        temp.write_bytes(ST)
    assert target.read_bytes() == ST and _leftovers(tmp_path) == []


def test_force_never_swaps_in_an_output_that_does_not_read_back(tmp_path: Path) -> None:
    target = tmp_path / "o.safetensors"
    target.write_bytes(ST)
    with pytest.raises(JobError, match="does not read back"), AtomicOutput(target, force=True) as t:
        t.write_bytes(b"\0" * 16)
    assert target.read_bytes() == ST and _leftovers(tmp_path) == []


def test_lock_is_per_output_and_freed_after(tmp_path: Path) -> None:
    target = tmp_path / "o.safetensors"
    first = AtomicOutput(target)
    first.check()
    with pytest.raises(JobError, match=f"pid {os.getpid()} on host"):
        AtomicOutput(target, force=True).check()
    AtomicOutput(tmp_path / "other.safetensors").check()  # another output: free
    first.release()
    AtomicOutput(target).check()
    # a lock file left by a killed job is not held: the next job takes it over
    lock_path(target).write_text(LockOwner(1, "h", 0.0, "x").to_json())
    with AtomicOutput(target) as temp:
        temp.write_bytes(ST)
    assert _leftovers(tmp_path) == []


def test_write_error_names_the_output(tmp_path: Path) -> None:
    target = tmp_path / "o.safetensors"
    with pytest.raises(JobError) as info, AtomicOutput(target):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert str(info.value) == (
        f"{target}: cannot write the output: No space left on device; nothing was written"
    )
    assert _leftovers(tmp_path) == []


def test_inspect_shows_a_temporary_shard_folder_as_one_abandoned_entry(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    pid = int(dead.stdout)
    temp = tmp_path / f"shards.tmp-{pid}-89abcdef"
    temp.mkdir()
    (temp / "model-00001-of-00002.safetensors").write_bytes(b"\0" * 100)
    (tmp_path / "model.pt.tmp").write_bytes(b"PK\x03\x04partial")  # another tool's: unknown owner
    ckpts = {c["path"]: c for c in inspect_json(tmp_path)["checkpoints"]}
    assert sorted(ckpts) == ["model.pt.tmp", temp.name]
    assert ckpts[temp.name]["complete"] is False
    assert ckpts[temp.name]["problems"][0].startswith(f"abandoned by pid {pid}")
    assert ckpts["model.pt.tmp"]["problems"] == ["still being written (temporary file name)"]
    proc = _clean(tmp_path, "y\n")
    assert proc.returncode == 0 and not temp.exists() and (tmp_path / "model.pt.tmp").exists()
