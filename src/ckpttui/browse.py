"""Cheap folder listing for the browser: names, stats and layout guesses, no file contents read."""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from ckpttui.formats import is_checkpoint_name
from ckpttui.inventory import is_temporary
from ckpttui.layouts import DIR_LAYOUTS

_STEP = re.compile(r"(?:checkpoint-|global_step|step_|step=|_)(\d+)(?:\D*$)")
_EPOCH = re.compile(r"(?:epoch_|epoch=|\.ep|^CKPT\+.*\+)(\d+)")


@dataclass(frozen=True)
class Entry:
    """One child of a folder, as the tree and the folder view show it."""

    name: str
    """File or folder name."""
    path: str
    """Absolute path."""
    kind: str
    """``dir``, ``checkpoint`` (a folder that is one checkpoint), ``file`` or ``other``."""
    layout: str | None = None
    """Layout of a checkpoint folder, from its entry names."""
    size: int = 0
    """Bytes on disk (files only; folders are summed by a scan)."""
    error: str | None = None
    """Why the entry could not be stat'ed (dangling link, loop)."""
    step: int | None = None
    """Step read from the name, for sorting."""

    @property
    def is_tensor_file(self) -> bool:
        """Whether it is a file the readers can open."""
        return self.kind == "file" and is_checkpoint_name(self.name) and not is_temporary(self.name)


def dir_layout(path: str) -> str | None:
    """The layout that claims a folder as one checkpoint, from its entry names, or None."""
    try:
        names = set(os.listdir(path))
    except OSError:
        return None
    folder = Path(path)
    for layout in DIR_LAYOUTS:
        if layout.claims(folder, names):
            return layout.name
    return None


def name_step(name: str) -> int | None:
    """A step or epoch number in a checkpoint name, for sorting (``checkpoint-500`` -> 500)."""
    m = _STEP.search(name) or _EPOCH.search(name)
    return int(m.group(1)) if m else None


def list_dir(path: str) -> list[Entry]:
    """The children of a folder, folders first, then by name."""
    out = []
    with os.scandir(path) as it:
        entries = list(it)
    for e in entries:
        try:
            st = e.stat(follow_symlinks=True)
        except OSError as exc:
            # errno, not the message: the message holds the path, which may contain "loop".
            reason = "symlink loop" if exc.errno == errno.ELOOP else "dangling symlink"
            out.append(Entry(e.name, e.path, "other", error=reason))
            continue
        if stat.S_ISDIR(st.st_mode):
            layout = dir_layout(e.path)
            out.append(
                Entry(
                    e.name,
                    e.path,
                    "checkpoint" if layout else "dir",
                    layout,
                    step=name_step(e.name),
                )
            )
        elif stat.S_ISREG(st.st_mode):
            out.append(Entry(e.name, e.path, "file", size=st.st_size, step=name_step(e.name)))
    out.sort(key=lambda x: (x.kind not in ("dir", "checkpoint"), x.name))
    return out


def disk_usage(path: str, seen: set[tuple[int, int]] | None = None) -> int:
    """Bytes of all regular files under a path, each (device, inode) once (symlinked folders not
    followed); pass one `seen` set for several paths so a hardlink across them counts once too."""
    seen = set() if seen is None else seen
    total = 0
    stack = [path]
    while stack:
        current = stack.pop()
        try:
            st = os.stat(current)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if key not in seen:
                seen.add(key)
                total += st.st_size
            continue
        try:
            with os.scandir(current) as it:
                for e in it:
                    try:
                        if e.is_dir(follow_symlinks=False):
                            stack.append(e.path)
                        elif e.is_file(follow_symlinks=True):
                            est = e.stat(follow_symlinks=True)
                            key = (est.st_dev, est.st_ino)
                            if key not in seen:
                                seen.add(key)
                                total += est.st_size
                    except OSError:
                        continue
        except OSError:
            continue
    return total
