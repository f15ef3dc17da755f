"""Who owns a job's temporary output and its lock: still running, or gone (abandoned).

A job writing ``OUT`` holds ``OUT.lock`` (an ``flock`` plus one JSON line naming its pid, host,
start time and temporary name) and writes into ``OUT.tmp-<pid>-<8 hex>``. While the job runs,
the lock file always names its temporary output; the job removes the temporary output before it
removes the lock. So a temporary output is *abandoned* when the lock does not name it (the owner
is gone, whichever host it ran on), or names it with this host and a pid that is no longer
running (or is a newer process that reused the pid: it started after the file was last written).

Stdlib only: ``inspect`` and the app call `temp_status` without importing torch.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

TEMP_RE = re.compile(r"^(?P<target>.+)\.tmp-(?P<pid>\d{1,10})-(?P<rand>[0-9a-f]{8})$")
"""``OUT.tmp-<pid>-<rand>``: the temporary name of a job's output."""
LOCK_SUFFIX = ".lock"
LOCK_MAX = 4096
PID_REUSE_SLACK = 2.0
"""Seconds of slack when comparing a process's start with a file's mtime (boot time is whole s)."""

State = Literal["running", "abandoned", "elsewhere"]


def host_name() -> str:
    """This machine's name, as recorded in lock files."""
    return socket.gethostname()


def temp_name(target_name: str, pid: int, rand: str) -> str:
    """``OUT.tmp-<pid>-<rand>``."""
    return f"{target_name}.tmp-{pid}-{rand}"


def lock_path(target: Path) -> Path:
    """``OUT.lock`` beside the output."""
    return target.with_name(target.name + LOCK_SUFFIX)


@dataclass(frozen=True)
class LockOwner:
    """What a lock file says about the job holding it."""

    pid: int
    host: str
    started: float
    """Unix time the job took the lock."""
    temp: str
    """Name (no folder) of the job's temporary output."""

    def to_json(self) -> str:
        """One JSON line."""
        return json.dumps(
            {"pid": self.pid, "host": self.host, "started": self.started, "temp": self.temp}
        )

    def describe(self) -> str:
        """``pid 123 on host a since 2026-12-02 07:58:01``."""
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"pid {self.pid} on host {self.host} since {when}"


def read_lock(path: Path) -> LockOwner | None:
    """The owner recorded in a lock file; None if absent, not a regular file, or unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        raw = os.read(fd, LOCK_MAX)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        data = json.loads(raw.decode("utf-8"))
        return LockOwner(
            int(data["pid"]), str(data["host"]), float(data["started"]), str(data["temp"])
        )
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, OverflowError):
        return None


def process_start(pid: int) -> float | None:
    """Unix time a local process started (Linux /proc), or None when unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read(4096).rsplit(b")", 1)[1].split()
        ticks = int(fields[19])  # field 22 of the whole line: starttime, clock ticks since boot
        with open("/proc/stat", "rb") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith(b"btime "))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def pid_running(pid: int, last_write: float) -> bool:
    """Whether `pid` runs here and could have written a file last modified at `last_write`."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    except OSError:
        return False
    start = process_start(pid)
    return start is None or start <= last_write + PID_REUSE_SLACK


@dataclass(frozen=True)
class TempStatus:
    """A job's temporary output and whether its owner still runs."""

    path: Path
    pid: int
    state: State
    host: str = ""

    @property
    def target(self) -> Path:
        """The output it would have become."""
        m = TEMP_RE.match(self.path.name)
        assert m is not None
        return self.path.with_name(m["target"])

    @property
    def message(self) -> str:
        """One line for ``inspect`` and the app."""
        if self.state == "running":
            return f"still being written by pid {self.pid}"
        if self.state == "elsewhere":
            return f"being written by pid {self.pid} on host {self.host}"
        return (
            f"abandoned by pid {self.pid} (no longer running); "
            f"`ckpttui clean {self.path.parent}` removes it"
        )


def temp_status(path: str | os.PathLike[str]) -> TempStatus | None:
    """The status of a job's temporary output, or None if `path` is not named like one."""
    p = Path(path)
    m = TEMP_RE.match(p.name)
    if m is None:
        return None
    pid = int(m["pid"])
    owner = read_lock(lock_path(p.with_name(m["target"])))
    if owner is None or owner.temp != p.name or owner.pid != pid:
        return TempStatus(p, pid, "abandoned")
    if owner.host != host_name():
        return TempStatus(p, pid, "elsewhere", owner.host)
    try:
        last_write = os.lstat(p).st_mtime
    except OSError:
        last_write = time.time()
    return TempStatus(p, pid, "running" if pid_running(pid, last_write) else "abandoned")


def stale_lock(path: Path) -> bool:
    """Whether a lock file beside an output names a job of this host that no longer runs."""
    owner = read_lock(path)
    if owner is None or owner.host != host_name():
        return False
    return not pid_running(owner.pid, owner.started)


@dataclass(frozen=True)
class Leftover:
    """Something a job that is gone left behind: its temporary output, or its lock file."""

    path: Path
    pid: int
    kind: Literal["temp", "lock"]
    size: int


def _size(path: Path) -> int:
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with_path = os.path.join(root, name)
            try:
                total += os.lstat(with_path).st_size
            except OSError:
                pass
    return total


def leftover(path: Path) -> Leftover | None:
    """`path` as a leftover of a job that no longer runs (on this host), else None."""
    status = temp_status(path)
    if status is not None:
        if status.state != "abandoned":
            return None
        return Leftover(path, status.pid, "temp", _size(path))
    if path.name.endswith(LOCK_SUFFIX) and stale_lock(path):
        owner = read_lock(path)
        assert owner is not None
        if owner.temp and os.path.lexists(path.with_name(owner.temp)):
            return None  # its temporary output is listed (and removed) first
        return Leftover(path, owner.pid, "lock", _size(path))
    return None


def find_leftovers(root: str | os.PathLike[str]) -> list[Leftover]:
    """Abandoned temporary outputs and stale lock files under `root` (symlinks not followed)."""
    top = Path(root)
    if not top.is_dir() or top.is_symlink():
        found = leftover(top)
        return [found] if found is not None else []
    temps: list[Leftover] = []
    locks: list[Path] = []
    for folder, dirs, files in os.walk(top):
        for name in [*dirs, *files]:
            path = Path(folder) / name
            if TEMP_RE.match(name):
                found = leftover(path)
                if found is not None:
                    temps.append(found)
            elif name.endswith(LOCK_SUFFIX):
                locks.append(path)
        dirs[:] = [d for d in dirs if not TEMP_RE.match(d)]  # a temp folder is one leftover
    gone = {t.path for t in temps}
    result = list(temps)
    for path in locks:
        owner = read_lock(path)
        if owner is not None and owner.temp and path.with_name(owner.temp) in gone:
            if stale_lock(path):
                result.append(Leftover(path, owner.pid, "lock", _size(path)))
            continue
        found = leftover(path)
        if found is not None:
            result.append(found)
    return sorted(result, key=lambda x: str(x.path))


def remove_leftover(item: Leftover) -> None:
    """Remove one leftover, checking again first that its owner is gone (OSError on failure)."""
    if item.kind == "temp":
        status = temp_status(item.path)
        if status is None or status.state != "abandoned":
            raise OSError(f"{item.path}: its owner pid {item.pid} is running again")
    else:
        _remove_stale_lock(item.path)
        return
    if item.path.is_dir() and not item.path.is_symlink():
        import shutil

        shutil.rmtree(item.path)
    else:
        item.path.unlink()


def _remove_stale_lock(path: Path) -> None:
    """Unlink a lock file only while holding its lock (so no job can be holding it)."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise OSError(f"{path}: held by a running job") from None
        if not stale_lock(path):
            raise OSError(f"{path}: now held by a running job")
        fst, cur = os.fstat(fd), os.lstat(path)
        if (fst.st_dev, fst.st_ino) == (cur.st_dev, cur.st_ino):
            os.unlink(path)
    finally:
        os.close(fd)
