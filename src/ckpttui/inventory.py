"""Walk a path, read every checkpoint file's index, group files into logical checkpoints, account.

This is what ``ckpttui inspect`` prints and what the UI's folder view fills in from. It reads
directory entries, sidecars, headers and pickles only; it never imports torch.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckpttui.accounting import Breakdown, breakdown, classify
from ckpttui.formats import is_checkpoint_name, read_file
from ckpttui.jobs.owner import TEMP_RE, temp_status
from ckpttui.layouts import DIR_LAYOUTS, FILE_LAYOUTS, layout_named
from ckpttui.records import Checkpoint, FileIndex, TensorRecord

_TMP = re.compile(
    r"\.(tmp|partial|incomplete)([-.][A-Za-z0-9_]+)?$|\.tmp\d+$|^tmp[-_.].*\.(pt|bin|"
    r"ckpt|safetensors|pth)$"
)


def is_temporary(name: str) -> bool:
    """Whether a name is a checkpoint still being written (``x.pt.tmp``, ``x.tmp-1234``)."""
    return bool(_TMP.search(name)) or TEMP_RE.match(name) is not None


@dataclass
class Inventory:
    """Everything `scan` found under one root."""

    root: Path
    """The path as given."""
    files: dict[str, FileIndex] = field(default_factory=dict)
    """Every file that was read, by absolute path."""
    records: dict[str, list[TensorRecord]] = field(default_factory=dict)
    """Classified tensor records of each read file."""
    checkpoints: list[Checkpoint] = field(default_factory=list)
    """Logical checkpoints, in walk order."""
    errors: list[tuple[str, str]] = field(default_factory=list)
    """(absolute path, one line) for every file or link that could not be read."""
    layout_of: dict[str, str] = field(default_factory=dict)
    """Layout of the checkpoint each read file belongs to."""
    inodes: dict[str, tuple[int, int]] = field(default_factory=dict)
    """(device, inode) of every file met, by absolute path."""
    same_as: dict[str, str] = field(default_factory=dict)
    """A file reached again (symlink, hardlink) -> the path it is counted under."""

    def rel(self, path: str) -> str:
        """Path relative to the root, with '/' separators ('' for the root itself)."""
        root = str(self.root)
        if path == root or path == os.path.abspath(root):
            return ""
        try:
            rel = os.path.relpath(path, os.path.abspath(root))
        except ValueError:
            return path
        return "" if rel == "." else rel.replace(os.sep, "/")

    def file_breakdown(self, path: str) -> Breakdown:
        """Sums for one read file."""
        return breakdown(self.records.get(path, []))

    def checkpoint_breakdown(self, ckpt: Checkpoint) -> Breakdown:
        """Sums over a checkpoint's files; a file reached twice counts under its first path only."""
        total = Breakdown()
        for f in ckpt.files:
            if f not in self.same_as:
                total.merge(self.file_breakdown(f))
        return total


def scan(root: str | os.PathLike[str], progress: Callable[[str], None] | None = None) -> Inventory:
    """Inventory a file or folder (recursively; symlinks followed, loops reported, not entered)."""
    inv = Inventory(Path(root))
    top = Path(os.path.abspath(root))
    try:
        st = top.stat()
    except OSError as exc:
        raise OSError(f"{root}: {_reason(exc, top)}") from None
    if stat.S_ISDIR(st.st_mode):
        _walk(inv, top, None, {(st.st_dev, st.st_ino)}, progress)
    elif stat.S_ISREG(st.st_mode):
        inv.inodes[str(top)] = (st.st_dev, st.st_ino)
        _loose_file(inv, top, progress)
    else:
        raise OSError(f"{root}: not a regular file or folder")
    _count_once(inv)
    return inv


def _count_once(inv: Inventory) -> None:
    """Files reached twice (symlinks, hardlinks) count under one path: the first that is not a
    symlink; checkpoints made only of such files say so (they are never averaged or totalled)."""
    groups: dict[tuple[int, int], list[str]] = {}
    for path, key in inv.inodes.items():
        groups.setdefault(key, []).append(path)
    for paths in groups.values():
        if len(paths) < 2:
            continue
        owner = next((p for p in paths if not os.path.islink(p)), paths[0])
        for p in paths:
            if p != owner:
                inv.same_as[p] = owner
    for ckpt in inv.checkpoints:
        if os.path.islink(ckpt.path):
            ckpt.info.setdefault("symlink_to", os.readlink(ckpt.path))
        if ckpt.files and all(f in inv.same_as for f in ckpt.files):
            ckpt.info["same_file_as"] = inv.rel(inv.same_as[ckpt.files[0]])


def _reason(exc: OSError, path: Path) -> str:
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    if exc.errno == errno.ENOENT and path.is_symlink():
        try:
            return f"dangling symlink to {os.readlink(path)}"
        except OSError:
            return "dangling symlink"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return exc.strerror.lower() if exc.strerror else str(exc)


def _read(inv: Inventory, path: Path, progress: Callable[[str], None] | None) -> FileIndex:
    if progress:
        progress(str(path))
    index = read_file(path)
    inv.files[str(path)] = index
    if index.error:
        inv.errors.append((str(path), index.error))
    return index


def _walk(
    inv: Inventory,
    folder: Path,
    owner: Checkpoint | None,
    seen: set[tuple[int, int]],
    progress: Callable[[str], None] | None,
) -> None:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        inv.errors.append((str(folder), f"cannot list folder: {_reason(exc, folder)}"))
        return
    names = {e.name for e in entries}
    claimed = None
    for layout in DIR_LAYOUTS:
        if layout.claims(folder, names):
            # A checkpoint folder nested in another is its own checkpoint (checkpoint-N/ inside a
            # model folder), except where the outer layout absorbs it (a ZeRO tag folder that a
            # training loop writes inside its own checkpoint folder).
            if owner is None or layout.name not in layout_named(owner.layout).absorbs:
                claimed = Checkpoint(str(folder), layout.name)
                inv.checkpoints.append(claimed)
                owner = claimed
            break
    for entry in entries:
        path = Path(entry.path)
        try:
            st = entry.stat(follow_symlinks=True)
        except OSError as exc:
            inv.errors.append((str(path), _reason(exc, path)))
            continue
        if stat.S_ISDIR(st.st_mode) and temp_status(path) is not None:
            _temporary(inv, path)  # a job's temporary folder of shards: one entry, not read
            continue
        if stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if key in seen:
                inv.errors.append(
                    (str(path), f"symlink loop: leads back to {os.path.realpath(path)}")
                )
                continue
            _walk(inv, path, owner, seen | {key}, progress)
        elif stat.S_ISREG(st.st_mode):
            inv.inodes[str(path)] = (st.st_dev, st.st_ino)
            if owner is not None:
                owner.files.append(str(path))
                if (
                    is_checkpoint_name(entry.name)
                    and not is_temporary(entry.name)
                    and not (entry.name.endswith(".distcp"))
                ):
                    _read(inv, path, progress)
            else:
                _loose_file(inv, path, progress)
    if claimed is not None:
        _describe_dir(inv, claimed)


def _describe_dir(inv: Inventory, ckpt: Checkpoint) -> None:
    layout = next(L for L in DIR_LAYOUTS if L.name == ckpt.layout)
    indexes = {f: inv.files[f] for f in ckpt.files if f in inv.files}
    try:
        layout.describe(ckpt, indexes)
    except OSError as exc:
        ckpt.problems.append(f"cannot read folder: {exc}")
    except Exception as exc:  # hostile content must cost one line on this checkpoint, not the scan
        _failed(inv, ckpt, ckpt.path, exc)
    _finish(inv, ckpt)


def _loose_file(inv: Inventory, path: Path, progress: Callable[[str], None] | None) -> None:
    """A file outside any checkpoint folder: it is a checkpoint of its own if it looks like one."""
    name = path.name
    if is_temporary(name):
        _temporary(inv, path)
        return
    if not is_checkpoint_name(name):
        return
    index = _read(inv, path, progress)
    if index.format == "text" and not index.error:
        return
    readable = index if index.error is None else None
    try:
        layout = next(L for L in FILE_LAYOUTS if L.claims(path, readable))
    except Exception:
        layout = next(L for L in FILE_LAYOUTS if L.claims(path, None))
    ckpt = Checkpoint(str(path), layout.name, files=[str(path)])
    try:
        layout.describe(ckpt, readable)
    except OSError as exc:
        ckpt.problems.append(f"cannot read sidecar: {exc}")
    except Exception as exc:  # hostile content must cost one line on this file, not the scan
        _failed(inv, ckpt, str(path), exc)
    inv.checkpoints.append(ckpt)
    _finish(inv, ckpt)


def _temporary(inv: Inventory, path: Path) -> None:
    """A temporary file or folder: incomplete; a job's own says whether its owner still runs."""
    owner = temp_status(path)
    ckpt = Checkpoint(
        str(path),
        _guess_layout(path.name),
        files=[str(path)] if path.is_file() else [],
        complete=False,
        problems=[owner.message if owner else "still being written (temporary file name)"],
    )
    if owner is not None:
        ckpt.info["temp_owner"] = {"pid": owner.pid, "state": owner.state}
    inv.checkpoints.append(ckpt)


def _guess_layout(name: str) -> str:
    """The layout a file still being written will have, from its name alone."""
    return next((L.name for L in FILE_LAYOUTS if layout_named(L.name).owns_name(name)), "torch")


def _finish(inv: Inventory, ckpt: Checkpoint) -> None:
    """Classify each read file under the checkpoint's layout; file errors make it incomplete."""
    for f in ckpt.files:
        index = inv.files.get(f)
        if index is None:
            continue
        inv.layout_of[f] = ckpt.layout
        if index.error:
            ckpt.problems.append(f"{inv.rel(f) or Path(f).name}: {index.error}")
            if "dangerous_globals" in index.metadata:
                ckpt.info["dangerous"] = True
            else:
                ckpt.complete = False
                continue
        try:
            inv.records[f] = classify(ckpt.layout, Path(f).name, index)
        except Exception as exc:  # one line on this file; the scan goes on
            _failed(inv, ckpt, f, exc)


def _failed(inv: Inventory, ckpt: Checkpoint, path: str, exc: Exception) -> None:
    """A layout or accounting step failed on hostile content: one line naming the file."""
    text = " ".join(str(exc).split())[:120]
    line = f"cannot be described ({type(exc).__name__}: {text})"
    ckpt.complete = False
    ckpt.problems.append(f"{inv.rel(path) or Path(path).name}: {line}")
    inv.errors.append((path, line))


def _categories(b: Breakdown) -> dict[str, dict[str, int]]:
    return {k: dict(v) for k, v in b.categories.items()}


def report_dict(inv: Inventory) -> dict[str, Any]:
    """The ``inspect --json`` document (see README, "inspect --json")."""
    files = []
    for path, index in inv.files.items():
        if not (index.tensors or index.unsafe_globals or index.error) or path in inv.same_as:
            continue
        b = inv.file_breakdown(path)
        files.append(
            {
                "path": inv.rel(path),
                "format": index.format,
                "size": index.size,
                "tensors": len(index.tensors),
                "storage_bytes": index.storage_bytes,
                "categories": _categories(b),
                "dtypes": dict(sorted(b.dtypes.items())),
                "globals": index.globals,
                "unsafe_globals": index.unsafe_globals,
                "error": index.error,
                "layout": inv.layout_of.get(path),
                "tensor_bytes": b.bytes,
                "reclaimable_bytes": b.reclaimable,
                "parts": dict(sorted(b.parts.items())),
            }
        )
    checkpoints = []
    for ckpt in inv.checkpoints:
        b = inv.checkpoint_breakdown(ckpt)
        size = 0
        for f in ckpt.files:
            if f in inv.same_as:
                continue
            try:
                size += os.stat(f).st_size
            except OSError:
                pass
        checkpoints.append(
            {
                "path": inv.rel(ckpt.path),
                "layout": ckpt.layout,
                "files": [inv.rel(f) for f in ckpt.files],
                "step": ckpt.step,
                "epoch": ckpt.epoch,
                "complete": ckpt.complete,
                "problems": ckpt.problems,
                "categories": _categories(b),
                "size": size,
                "tensor_bytes": b.bytes,
                "storage_bytes": sum(
                    inv.files[f].storage_bytes
                    for f in ckpt.files
                    if f in inv.files and f not in inv.same_as
                ),
                "reclaimable_bytes": b.reclaimable,
                "parts": dict(sorted(b.parts.items())),
                "info": ckpt.info,
            }
        )
    return {
        "root": str(inv.root),
        "files": files,
        "checkpoints": checkpoints,
        "errors": [{"path": inv.rel(p), "error": e} for p, e in inv.errors],
    }
