"""Walk a path, read every checkpoint file's index, group files into logical checkpoints, account.

This is what ``ckpttui inspect`` prints and what the UI's folder view fills in from. It reads
directory entries, sidecars, headers and pickles only; it never imports torch.
"""

from __future__ import annotations

import dataclasses
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
from ckpttui.summary import summarize

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

    def __post_init__(self) -> None:
        self._top = os.path.abspath(self.root)

    def rel(self, path: str) -> str:
        """Path relative to the root, with '/' separators ('' for the root itself)."""
        root = str(self.root)
        top = self._top
        if path.startswith(top) and path[len(top) : len(top) + 1] == os.sep and ".." not in path:
            return path[len(top) + 1 :].replace(os.sep, "/")  # the common case, without relpath
        if path in (root, top):
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
    top, st = _top(root)
    if stat.S_ISDIR(st.st_mode):
        _walk(inv, top, None, {(st.st_dev, st.st_ino)}, progress)
    elif stat.S_ISREG(st.st_mode):
        inv.inodes[str(top)] = (st.st_dev, st.st_ino)
        _loose_file(inv, top, progress)
    else:
        raise OSError(f"{root}: not a regular file or folder")
    _count_once(inv)
    return inv


def _top(root: str | os.PathLike[str]) -> tuple[Path, os.stat_result]:
    """The absolute path to walk from, and its stat (OSError naming `root` if there is none)."""
    top = Path(os.path.abspath(root))
    try:
        return top, top.stat()
    except OSError as exc:
        raise OSError(f"{root}: {_reason(exc, top)}") from None


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


@dataclass(frozen=True)
class Unit:
    """A piece of a walk that is read on its own (see `plan`): a checkpoint folder that is no
    other's part, a file outside any checkpoint folder, or a temporary folder."""

    kind: str
    """``dir``, ``file`` or ``temp``."""
    path: str
    """Absolute path."""
    seen: frozenset[tuple[int, int]] = frozenset()
    """(device, inode) of the folders above it and itself (loop detection inside it)."""
    first: int = 0
    """Index in `Plan.stats` of its first file (its files run to the next unit's `first`)."""
    sidecars: tuple[tuple[str, int, int, int], ...] = ()  # Stat
    """(name, size, mtime_ns, inode) of a loose file's sibling files its layout may read."""


@dataclass
class Plan:
    """A walk that read no file: the units to read, and the stat of every regular file met."""

    inv: Inventory
    """Holds `inodes`, `same_as` and the walk's own errors (outside any unit)."""
    units: list[Unit] = field(default_factory=list)
    """In walk order."""
    stats: list[tuple[str, int, int, int]] = field(default_factory=list)
    """(absolute path, size, mtime_ns, inode) of each regular file, in walk order."""

    def unit_stats(self, i: int) -> list[tuple[str, int, int, int]]:
        """The stat lines of unit i's files (a folder's files, or a loose file and its sidecars)."""
        unit = self.units[i]
        end = self.units[i + 1].first if i + 1 < len(self.units) else len(self.stats)
        own = self.stats[unit.first : end] if unit.kind != "temp" else []
        return own + [(n, s, m, ino) for n, s, m, ino in unit.sidecars]


SIDECAR_NAMES = frozenset({"latest", "config.yaml", "train.yaml", "hyperparams.yaml"})
"""Files beside loose checkpoints that layouts read (a file's own ``NAME.*`` siblings too)."""


def plan(root: str | os.PathLike[str]) -> Plan:
    """Walk a file or folder the way `scan` does, reading no file: what `scan` would read, in
    units that can be read apart (in worker processes, or from a cache)."""
    out = Plan(Inventory(Path(root)))
    top, st = _top(root)
    if stat.S_ISDIR(st.st_mode):
        _walk(out.inv, top, None, {(st.st_dev, st.st_ino)}, None, out)
    elif stat.S_ISREG(st.st_mode):
        out.inv.inodes[str(top)] = (st.st_dev, st.st_ino)
        out.units.append(Unit("file", str(top), first=0, sidecars=_sidecars(top, None)))
        out.stats.append((str(top), st.st_size, st.st_mtime_ns, st.st_ino))
    else:
        raise OSError(f"{root}: not a regular file or folder")
    _count_once(out.inv)
    return out


def scan_unit(root: str, unit: Unit) -> Inventory:
    """Read one unit of a `plan` into an inventory of its own (paths relative to `root`)."""
    inv = Inventory(Path(root))
    path = Path(unit.path)
    if unit.kind == "dir":
        _walk(inv, path, None, set(unit.seen), None)
    elif unit.kind == "temp":
        _temporary(inv, path)
    else:
        _loose_file(inv, path, None)
    for ckpt in inv.checkpoints:
        if os.path.islink(ckpt.path):
            ckpt.info.setdefault("symlink_to", os.readlink(ckpt.path))
    return inv


Stat = tuple[str, int, int, int]
"""(absolute path, size, mtime_ns, inode)."""


def _sidecar_index(entries: list[os.DirEntry[str]]) -> dict[str, list[Stat]]:
    """A folder's files that are not checkpoints (YAML, JSON...), by the name part before the
    first dot (``epoch_3.yaml`` -> ``epoch_3``), and the shared ones (`SIDECAR_NAMES`) under ''."""
    out: dict[str, list[Stat]] = {}
    for e in entries:
        if is_checkpoint_name(e.name) or is_temporary(e.name):
            continue
        shared = e.name in SIDECAR_NAMES
        if not shared and "." not in e.name:
            continue
        try:
            st = e.stat()
        except OSError:
            continue
        key = "" if shared else e.name.split(".")[0]
        out.setdefault(key, []).append((e.path, st.st_size, st.st_mtime_ns, st.st_ino))
    return out


def _sidecars(path: Path, index: dict[str, list[Stat]] | None) -> tuple[Stat, ...]:
    """The sidecars a loose file's layout may read: ``NAME.*`` beside it, and `SIDECAR_NAMES`."""
    if index is None:
        try:
            index = _sidecar_index(list(os.scandir(path.parent)))
        except OSError:
            return ()
    return tuple(index.get(path.name.split(".")[0], []) + index.get("", []))


def _walk(
    inv: Inventory,
    folder: Path,
    owner: Checkpoint | None,
    seen: set[tuple[int, int]],
    progress: Callable[[str], None] | None,
    planned: Plan | None = None,
) -> None:
    """Walk a folder: read and describe (or, given `planned`, only list the units to read)."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        if planned is None or owner is None:
            inv.errors.append((str(folder), f"cannot list folder: {_reason(exc, folder)}"))
        return
    names = {e.name for e in entries}
    sidecars: dict[str, list[Stat]] | None = None
    claimed = None
    for layout in DIR_LAYOUTS:
        if layout.claims(folder, names):
            # A checkpoint folder nested in another is its own checkpoint (checkpoint-N/ inside a
            # model folder), except where the outer layout absorbs it (a ZeRO tag folder that a
            # training loop writes inside its own checkpoint folder).
            if owner is None or layout.name not in layout_named(owner.layout).absorbs:
                claimed = Checkpoint(str(folder), layout.name)
                if planned is None:
                    inv.checkpoints.append(claimed)
                elif owner is None:
                    planned.units.append(
                        Unit("dir", str(folder), frozenset(seen), len(planned.stats))
                    )
                owner = claimed
            break
    for entry in entries:
        path = Path(entry.path)
        try:
            st = entry.stat(follow_symlinks=True)
        except OSError as exc:
            if planned is None or owner is None:
                inv.errors.append((str(path), _reason(exc, path)))
            continue
        if stat.S_ISDIR(st.st_mode) and temp_status(path) is not None:
            # a job's temporary folder of shards: one entry, not read
            if planned is None:
                _temporary(inv, path)
            elif owner is None:
                planned.units.append(Unit("temp", str(path), first=len(planned.stats)))
            continue
        if stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if key in seen:
                if planned is None or owner is None:
                    inv.errors.append(
                        (str(path), f"symlink loop: leads back to {os.path.realpath(path)}")
                    )
                continue
            _walk(inv, path, owner, seen | {key}, progress, planned)
        elif stat.S_ISREG(st.st_mode):
            inv.inodes[str(path)] = (st.st_dev, st.st_ino)
            if planned is not None:
                if owner is None and (is_temporary(entry.name) or is_checkpoint_name(entry.name)):
                    if sidecars is None:
                        sidecars = _sidecar_index(entries)
                    unit = Unit("file", str(path), first=len(planned.stats))
                    planned.units.append(
                        dataclasses.replace(unit, sidecars=_sidecars(path, sidecars))
                    )
                planned.stats.append((str(path), st.st_size, st.st_mtime_ns, st.st_ino))
            elif owner is not None:
                owner.files.append(str(path))
                if (
                    is_checkpoint_name(entry.name)
                    and not is_temporary(entry.name)
                    and not (entry.name.endswith(".distcp"))
                ):
                    _read(inv, path, progress)
            else:
                _loose_file(inv, path, progress)
    if claimed is not None and planned is None:
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


def report_dict(inv: Inventory) -> dict[str, Any]:
    """The ``inspect --json`` document (see README, "inspect --json")."""
    summaries = summarize(inv)
    return {
        "root": str(inv.root),
        "files": [
            f.to_dict(inv.rel)
            for s in summaries
            for f in s.files_read
            if f.path not in s.counted_elsewhere
        ],
        "checkpoints": [s.to_dict(inv.rel) for s in summaries],
        "errors": [{"path": inv.rel(p), "error": e} for p, e in inv.errors],
    }
