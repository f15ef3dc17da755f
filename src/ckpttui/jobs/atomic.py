"""Atomic outputs: write beside the target under a temporary name, fsync, then rename into place.

A job opens `AtomicOutput(target, inputs=..., force=..., estimate=...)` before it writes a byte:
the checks (target is not an input, does not exist unless forced, the disk has room) run first,
then the job writes into ``NAME.tmp-XXXX`` (a file, or a folder for sharded outputs) in the target's
folder, so the final rename never crosses file systems. On success every file is fsynced, renamed,
and the folder fsynced; on any exception (cancel included, and ``GeneratorExit`` when the consumer
stops iterating) the temporary file or folder is removed and the target is left as it was.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import shutil
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from ckpttui.jobs.events import JobError
from ckpttui.units import human_bytes

HASH_CHUNK = 1 << 20


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
        if src_real.startswith(real.rstrip(os.sep) + os.sep):
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
        self.temp: Path | None = None
        self.committed = False

    def check(self) -> None:
        """Run every refusal check without creating anything."""
        parent = self.target.parent
        if not parent.is_dir():
            raise JobError(f"{self.target}: folder {parent} does not exist")
        check_not_input(self.target, self.inputs)
        if os.path.lexists(self.target) and not self.force:
            raise JobError(f"{self.target} exists (pass --force to overwrite it)")
        check_free_space(parent, self.estimate, self.target)

    def __enter__(self) -> Path:
        self.check()
        parent = self.target.parent
        for _ in range(100):
            temp = parent / f"{self.target.name}.tmp-{secrets.token_hex(4)}"
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
            self.temp = temp
            return temp
        raise JobError(f"{self.target}: no free temporary name in {parent}")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()

    def commit(self) -> None:
        """fsync the temporary output and rename it over the target."""
        temp = self.temp
        if temp is None or self.committed:
            return
        try:
            if self.folder:
                for path in sorted(temp.rglob("*")):
                    if path.is_file():
                        fsync_file(path)
                fsync_dir(temp)
            else:
                fsync_file(temp)
            self._replace(temp)
            fsync_dir(self.target.parent)
        except OSError as exc:
            self.discard()
            raise JobError(f"{self.target}: cannot finish writing: {exc.strerror or exc}") from None
        self.committed = True

    def _replace(self, temp: Path) -> None:
        if not os.path.lexists(self.target):
            os.rename(temp, self.target)
            return
        if not self.folder and not self.target.is_dir():
            os.replace(temp, self.target)
            return
        # A folder cannot be renamed over a non-empty one: move the old one aside first.
        aside = self.target.parent / f"{self.target.name}.old-{secrets.token_hex(4)}"
        os.rename(self.target, aside)
        try:
            os.rename(temp, self.target)
        except OSError:
            os.rename(aside, self.target)
            raise
        _remove(aside)

    def discard(self) -> None:
        """Remove the temporary output (the target is untouched)."""
        temp, self.temp = self.temp, None
        if temp is not None:
            _remove(temp)


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
