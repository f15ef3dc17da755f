"""Atomic outputs: lock the target, write beside it under a temporary name, fsync, then place it.

A job opens `AtomicOutput(target, inputs=..., force=..., estimate=...)` before it writes a byte.
`check` takes the output's lock (``OUT.lock``: an ``flock`` and a line naming the job's pid, host
and temporary name, see `ckpttui.jobs.owner`), so a second job on the same output fails at once
naming the first one's pid; then the refusals run (target is not an input, does not exist unless
forced, the disk has room) and, with ``force``, the identity of what is there is recorded
(device, inode, size, mtime; for a folder, of every entry in it). The job writes into
``OUT.tmp-<pid>-XXXXXXXX`` (a file, or a folder for sharded outputs) in the target's folder, so
the final rename never crosses file systems.

On success every file is fsynced and the output placed without replacing anything it did not
check: a rename that refuses to replace (``renameat2(RENAME_NOREPLACE)``, else a hard link, else
a folder rename, which cannot replace a non-empty folder), so a file or folder created at the
target while the job ran is kept and the job fails naming it. With ``force`` the old output is
replaced only if it is still exactly what was recorded, and only after the new one reads back:
the two are swapped atomically (``RENAME_EXCHANGE``, else the old one is moved aside first) and
the old one removed. On any exception (cancel included, and ``GeneratorExit`` when the consumer
stops iterating) the temporary output is removed and the target left as it was; an ``OSError``
while writing (disk full) becomes a `JobError` naming the output. `discard_all` removes what is
left of every live output (the CLI calls it after a signal).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import os
import secrets
import shutil
import stat
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from ckpttui.jobs.events import JobError
from ckpttui.jobs.owner import LockOwner, host_name, lock_path, read_lock, temp_name
from ckpttui.paths import is_within
from ckpttui.units import human_bytes

HASH_CHUNK = 1 << 20
MAX_SNAPSHOT_ENTRIES = 100_000
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_EXISTS = (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (a rename is durable only once its folder is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush a file's data and size to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_not_input(target: Path, inputs: Iterable[str | os.PathLike[str]]) -> None:
    """Refuse a target that is an input, holds an input, or is the same file by another name."""
    real = os.path.realpath(target)
    ident = _identity(target)
    for item in inputs:
        src = Path(item)
        src_real = os.path.realpath(src)
        if src_real == real or (ident is not None and _identity(src) == ident):
            raise JobError(f"{target}: refusing to overwrite an input ({src})")
        if is_within(src_real, real):
            raise JobError(f"{target}: refusing to replace a folder that holds an input ({src})")


def check_free_space(folder: Path, needed: int, target: Path) -> None:
    """Raise a `JobError` naming both numbers when `folder` has less than `needed` bytes free."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise JobError(
            f"{target}: not enough free space in {folder}: the output needs "
            f"{human_bytes(needed)} ({needed} bytes), {human_bytes(free)} "
            f"({free} bytes) are free"
        )


# ------------------------------------------------------------------ renames that never replace


class _Unsupported(Exception):
    """renameat2 (or the flag) is not available here: use the portable fallback."""


USE_RENAMEAT2 = True
"""Tests turn it off to exercise the portable fallbacks."""
_renameat2_fn: Any = None


def _renameat2(src: Path, dst: Path, flags: int) -> None:
    global _renameat2_fn
    if not USE_RENAMEAT2:
        raise _Unsupported
    if _renameat2_fn is None:
        try:
            fn = ctypes.CDLL(None, use_errno=True).renameat2
        except (OSError, AttributeError):
            _renameat2_fn = False
        else:
            fn.argtypes = [
                ctypes.c_int,
                ctypes.c_char_p,
                ctypes.c_int,
                ctypes.c_char_p,
                ctypes.c_uint,
            ]
            fn.restype = ctypes.c_int
            _renameat2_fn = fn
    if _renameat2_fn is False:
        raise _Unsupported
    if _renameat2_fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise _Unsupported
        raise OSError(err, os.strerror(err), str(src), None, str(dst))


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename `src` to `dst`, failing (EEXIST and kin) if anything is at `dst`, never replacing it.

    Linux ``renameat2(RENAME_NOREPLACE)`` where the file system has it; else a hard link then
    unlink for files, and for folders a plain rename, which cannot replace a non-empty folder or a
    file (only an empty folder created in the instant between the check and the rename could be).
    """
    try:
        _renameat2(src, dst, RENAME_NOREPLACE)
        return
    except _Unsupported:
        pass
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    if src.is_dir() and not src.is_symlink():
        os.rename(src, dst)
        return
    try:
        os.link(src, dst, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError:
        # no hard links on this file system: the existence check above is all we can do
        os.rename(src, dst)
        return
    os.unlink(src)


def exchange(a: Path, b: Path) -> None:
    """Swap two paths atomically (``renameat2(RENAME_EXCHANGE)``); `_Unsupported` if unavailable."""
    _renameat2(a, b, RENAME_EXCHANGE)


# ------------------------------------------------------------------ identity of an old output


@dataclass(frozen=True)
class Identity:
    """What was at a path: type, device, inode, size, mtime (for a folder, of each entry)."""

    kind: str
    dev: int
    ino: int
    size: int
    mtime_ns: int
    entries: tuple[tuple[str, int, int, int, int], ...] = ()


def identity(path: Path) -> Identity | None:
    """The identity of what is at `path` (not following a symlink), None if nothing is there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        kind = "file" if stat.S_ISREG(st.st_mode) else "other"
        return Identity(kind, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    entries = []
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(root, name)
            try:
                s = os.lstat(full)
            except OSError:
                continue
            rel = os.path.relpath(full, path)
            if stat.S_ISDIR(s.st_mode):
                entries.append((rel, s.st_dev, s.st_ino, 0, 0))
            else:
                entries.append((rel, s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns))
            if len(entries) > MAX_SNAPSHOT_ENTRIES:
                raise JobError(
                    f"{path}: over {MAX_SNAPSHOT_ENTRIES} entries; refusing to replace "
                    "that folder (remove it yourself if it is meant to go)"
                )
    # a folder's own size and mtime follow its entries, which are compared one by one
    return Identity("folder", st.st_dev, st.st_ino, 0, 0, tuple(sorted(entries)))


# ------------------------------------------------------------------ signals and live outputs

_critical = 0


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """While placing or removing an output a signal handler must not raise (see `interruptible`)."""
    global _critical
    _critical += 1
    try:
        yield
    finally:
        _critical -= 1


def interruptible() -> bool:
    """Whether a signal handler may raise now (no output is being placed or removed)."""
    return _critical == 0


class _State:
    """What a live output holds: its lock and temporary path (cleaned by `release`)."""

    def __init__(self) -> None:
        self.temp: Path | None = None
        self.lock_fd: int | None = None
        self.lock_path: Path | None = None
        self.lock_ident: tuple[int, int] | None = None

    def remove_temp(self) -> None:
        temp, self.temp = self.temp, None
        if temp is not None:
            _remove(temp)

    def release(self) -> None:
        """Remove the temporary output (if any), then the lock file, then unlock."""
        with critical():
            try:
                self.remove_temp()
            finally:
                self._unlock()
                _LIVE.discard(self)

    def _unlock(self) -> None:
        fd, self.lock_fd = self.lock_fd, None
        if fd is None:
            return
        try:
            assert self.lock_path is not None
            st = os.lstat(self.lock_path)
            if (st.st_dev, st.st_ino) == self.lock_ident:
                os.unlink(self.lock_path)  # while still holding it: see `_take_lock`
        except OSError:
            pass
        finally:
            os.close(fd)


_LIVE: set[_State] = set()


def discard_all() -> None:
    """Remove every live output's temporary file or folder and lock (after a signal, at exit)."""
    for state in list(_LIVE):
        with contextlib.suppress(OSError):
            state.release()


# ------------------------------------------------------------------ the output


class AtomicOutput:
    """Write a file (or with ``folder=True`` a folder) at `target` atomically; see the module."""

    def __init__(
        self,
        target: str | os.PathLike[str],
        *,
        inputs: Iterable[str | os.PathLike[str]] = (),
        force: bool = False,
        estimate: int = 0,
        folder: bool = False,
    ) -> None:
        self.target = Path(os.path.abspath(target))
        self.inputs = [Path(p) for p in inputs]
        self.force = force
        self.estimate = estimate
        self.folder = folder
        self.committed = False
        self.original: Identity | None = None
        """What was at the target when the job started (checked before it is replaced)."""
        self._checked = False
        self._started = time.time()
        self._state = _State()
        weakref.finalize(self, self._state.release)

    @property
    def temp(self) -> Path | None:
        """The temporary output while it is being written."""
        return self._state.temp

    @property
    def lock(self) -> Path:
        """``OUT.lock``."""
        return lock_path(self.target)

    def check(self) -> None:
        """Take the output's lock and run every refusal check, creating nothing else."""
        parent = self.target.parent
        if not parent.is_dir():
            raise JobError(f"{self.target}: folder {parent} does not exist")
        check_not_input(self.target, self.inputs)
        self._take_lock()
        try:
            exists = os.path.lexists(self.target)
            if exists and not self.force:
                raise JobError(f"{self.target} exists (pass --force to overwrite it)")
            if not self._checked:
                self.original = identity(self.target) if exists else None
            check_free_space(parent, self.estimate, self.target)
        except BaseException:
            self.release()
            raise
        self._checked = True

    def _take_lock(self) -> None:
        state = self._state
        if state.lock_fd is not None:
            return
        path = self.lock
        for _ in range(20):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
            except OSError as exc:
                raise JobError(
                    f"{self.target}: cannot create its lock file {path.name}: {exc.strerror or exc}"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise JobError(
                        f"{self.target}: cannot lock {path.name}: {exc.strerror or exc}"
                    ) from None
                owner = read_lock(path)
                who = owner.describe() if owner is not None else "its pid not yet recorded"
                raise JobError(
                    f"{self.target}: another job is writing this output ({who}; "
                    f"it holds {path.name})"
                ) from None
            # A finishing job unlinks the lock file while holding it: if the file we locked is
            # no longer the one at the path, take the new one.
            fst = os.fstat(fd)
            try:
                cur = os.lstat(path)
            except FileNotFoundError:
                cur = None
            if cur is None or (cur.st_dev, cur.st_ino) != (fst.st_dev, fst.st_ino):
                os.close(fd)
                continue
            if not stat.S_ISREG(fst.st_mode):
                os.close(fd)
                raise JobError(f"{self.target}: {path.name} is not a regular file")
            state.lock_fd, state.lock_path = fd, path
            state.lock_ident = (fst.st_dev, fst.st_ino)
            _LIVE.add(state)
            self._record_owner("")
            return
        raise JobError(f"{self.target}: cannot take its lock {path.name} (it keeps changing)")

    def _record_owner(self, temp: str) -> None:
        fd = self._state.lock_fd
        assert fd is not None
        line = LockOwner(os.getpid(), host_name(), self._started, temp).to_json() + "\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, line.encode("utf-8"), 0)

    def __enter__(self) -> Path:
        self.check()
        parent = self.target.parent
        try:
            for _ in range(100):
                name = temp_name(self.target.name, os.getpid(), secrets.token_hex(4))
                temp = parent / name
                self._record_owner(name)  # before the temp exists: see ckpttui.jobs.owner
                try:
                    if self.folder:
                        os.mkdir(temp, 0o777)
                    else:
                        os.close(os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
                except FileExistsError:
                    continue
                except OSError as exc:
                    raise JobError(
                        f"{self.target}: cannot create a temporary "
                        f"{'folder' if self.folder else 'file'} in {parent}: "
                        f"{exc.strerror or exc}"
                    ) from None
                self._state.temp = temp
                return temp
            raise JobError(f"{self.target}: no free temporary name in {parent}")
        except BaseException:
            self.release()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.commit()
            return
        temp = self.temp
        self.discard()
        if isinstance(exc, OSError):
            raise JobError(self._write_error(exc, temp)) from None

    def _write_error(self, exc: OSError, temp: Path | None) -> str:
        """One line for an OS error while writing (disk full...), naming the file concerned."""
        reason = exc.strerror or str(exc)
        where = str(exc.filename) if exc.filename else ""
        if where and temp is not None and not where.startswith(str(temp)):
            return f"{where}: {reason}"  # an input, or some other file
        part = ""
        if where and temp is not None and where != str(temp):
            part = f" (file {os.path.relpath(where, temp)})"
        return f"{self.target}: cannot write the output{part}: {reason}; nothing was written"

    def commit(self) -> None:
        """fsync the temporary output and place it at the target (see the module)."""
        temp = self.temp
        if temp is None or self.committed:
            return
        with critical():
            try:
                if self.folder:
                    for path in sorted(temp.rglob("*")):
                        if path.is_file():
                            fsync_file(path)
                    fsync_dir(temp)
                else:
                    fsync_file(temp)
                if self.original is None:
                    self._place(temp)
                else:
                    self._verify_readable(temp)
                    self._swap(temp)
                fsync_dir(self.target.parent)
            except JobError:
                self.release()
                raise
            except OSError as exc:
                self.release()
                raise JobError(
                    f"{self.target}: cannot finish writing: {exc.strerror or exc}"
                ) from None
            self.committed = True
            self.release()

    def _what_is_there(self) -> str:
        if self.target.is_dir() and not self.target.is_symlink():
            return "a folder"
        return "a file"

    def _place(self, temp: Path) -> None:
        try:
            rename_noreplace(temp, self.target)
        except OSError as exc:
            if exc.errno not in _EXISTS:
                raise
            raise JobError(
                f"{self.target}: {self._what_is_there()} appeared there while this job ran; "
                "it was kept and this job's output removed"
            ) from None
        self._state.temp = None

    def _changed(self) -> JobError:
        return JobError(
            f"{self.target} changed while this job ran; --force replaces only what was there "
            "when the job started, so it was kept and this job's output removed"
        )

    def _swap(self, temp: Path) -> None:
        """Replace the recorded old output with `temp`, refusing if it is not the recorded one."""
        now = identity(self.target)
        if now is None:
            self._place(temp)  # the old output was removed meanwhile: nothing to replace
            return
        if now != self.original:
            raise self._changed()
        try:
            exchange(temp, self.target)
        except _Unsupported:
            self._swap_aside(temp)
            return
        # the old output is now at `temp`: make sure it is what was checked, else swap back
        if identity(temp) != self.original:
            exchange(temp, self.target)
            raise self._changed()
        with contextlib.suppress(OSError):
            self._state.remove_temp()  # the old output
        self._state.temp = None

    def _swap_aside(self, temp: Path) -> None:
        aside = self.target.parent / temp_name(
            f"{self.target.name}.old", os.getpid(), secrets.token_hex(4)
        )
        os.rename(self.target, aside)
        if identity(aside) != self.original:
            with contextlib.suppress(OSError):
                rename_noreplace(aside, self.target)
            raise self._changed()
        try:
            rename_noreplace(temp, self.target)
        except OSError as exc:
            if exc.errno not in _EXISTS:
                with contextlib.suppress(OSError):
                    rename_noreplace(aside, self.target)
                raise
            raise JobError(
                f"{self.target}: {self._what_is_there()} appeared there while this job ran; "
                f"it was kept, the old output is at {aside.name} and this job's output removed"
            ) from None
        self._state.temp = None
        with contextlib.suppress(OSError):
            _remove(aside)

    def _verify_readable(self, temp: Path) -> None:
        """Before replacing an old output: each checkpoint file of the new one reads back."""
        from ckpttui.formats import is_checkpoint_name, read_file

        if self.folder:
            files = [(p, p.name) for p in sorted(temp.rglob("*")) if p.is_file()]
        else:
            files = [(temp, self.target.name)]
        for path, name in files:
            if not is_checkpoint_name(name) or name.endswith(".json"):
                continue  # shard indexes and configs are JSON, not checkpoints
            index = read_file(path)
            # a folder's text files are sidecars and counters (a counter.ckpt holding an epoch)
            bad = ("unknown", "empty") if self.folder else ("text", "unknown", "empty")
            if index.error or index.format in bad:
                raise JobError(
                    f"{self.target}: the new output does not read back "
                    f"({index.error or index.format}); the old one was kept"
                )

    def discard(self) -> None:
        """Remove the temporary output and release the lock (the target is untouched)."""
        self.release()

    def release(self) -> None:
        """Remove what is left of the temporary output, the lock file, and unlock."""
        self._state.release()


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
