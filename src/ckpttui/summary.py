"""What a folder scan keeps per checkpoint: sums and metadata, never tensor records.

A folder of 50,000 checkpoints is scanned into 50,000 `CheckpointSummary` values (a few KB each);
the tensor records each file's reader produced are summed and dropped file by file, and a
checkpoint's tensors are read again when it is opened. A summary round-trips through the
``inspect --json`` document: `CheckpointSummary.to_dict` gives a ``checkpoints`` entry and
`FileSummary.to_dict` a ``files`` entry (paths relative to the scan root), and ``from_dict``
reads them back (the SQLite scan cache stores the same dicts).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ckpttui.records import CATEGORIES, Checkpoint

if TYPE_CHECKING:
    from ckpttui.inventory import Inventory

Rel = Callable[[str], str]
"""Absolute path -> path relative to the scan root, as ``inspect --json`` writes it."""


def _intern(words: Iterable[str]) -> list[str]:
    """Names that repeat in every checkpoint (globals, dtypes, parts) are stored once."""
    return [sys.intern(w) for w in words]


def _counts(d: Mapping[str, int]) -> dict[str, int]:
    return {sys.intern(k): int(v) for k, v in sorted(d.items())}


_CATEGORY_NAMES = tuple(c.value for c in CATEGORIES)
"""Read once: an enum's ``.value`` costs, and every summary read back starts from these."""


def _empty_categories() -> dict[str, dict[str, int]]:
    return {c: {"tensors": 0, "bytes": 0} for c in _CATEGORY_NAMES}


def _categories(d: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    out = _empty_categories()
    for cat, sums in d.items():  # each category once: its sums replace the zeros
        out[cat if cat in out else sys.intern(cat)] = {
            "tensors": int(sums.get("tensors", 0)),
            "bytes": int(sums.get("bytes", 0)),
        }
    return out


def _join(root: str, rel: str) -> str:
    if os.path.isabs(rel):
        return rel
    return root if rel in ("", ".") else os.path.join(root, *rel.split("/"))


@dataclass
class FileSummary:
    """One read file of a checkpoint: its sums by category, part and dtype (an ``inspect --json``
    ``files`` entry)."""

    path: str
    """Absolute path."""
    format: str
    """Reader that read it (``torch-zip``, ``safetensors``...)."""
    size: int
    """Bytes on disk."""
    tensors: int = 0
    """Number of named tensors."""
    storage_bytes: int = 0
    """Bytes of distinct storages."""
    tensor_bytes: int = 0
    """Sum of numel x element size over the named tensors."""
    reclaimable_bytes: int = 0
    """Bytes not needed to run the model."""
    categories: dict[str, dict[str, int]] = field(default_factory=_empty_categories)
    """category -> {"tensors": n, "bytes": b}."""
    parts: dict[str, int] = field(default_factory=dict)
    """``category/part`` -> bytes."""
    dtypes: dict[str, int] = field(default_factory=dict)
    """dtype -> number of tensors."""
    dtype_bytes: dict[str, int] = field(default_factory=dict)
    """dtype -> bytes (the Breakdown tab of a saved scan)."""
    modules: dict[str, int] = field(default_factory=dict)
    """Top-level module of the weights -> bytes, the 12 biggest (the Breakdown tab)."""
    globals: list[str] = field(default_factory=list)
    """Every global its pickle names."""
    unsafe_globals: list[str] = field(default_factory=list)
    """Globals that are neither plain data nor torch's rebuild functions."""
    error: str | None = None
    """Why it could not be read, or None."""
    layout: str | None = None
    """Layout of the checkpoint it belongs to."""

    def to_dict(self, rel: Rel) -> dict[str, Any]:
        """The ``inspect --json`` ``files`` entry."""
        return {
            "path": rel(self.path),
            "format": self.format,
            "size": self.size,
            "tensors": self.tensors,
            "storage_bytes": self.storage_bytes,
            "categories": {k: dict(v) for k, v in self.categories.items()},
            "dtypes": dict(self.dtypes),
            "globals": list(self.globals),
            "unsafe_globals": list(self.unsafe_globals),
            "error": self.error,
            "layout": self.layout,
            "tensor_bytes": self.tensor_bytes,
            "reclaimable_bytes": self.reclaimable_bytes,
            "parts": dict(self.parts),
            "dtype_bytes": dict(self.dtype_bytes),
            "modules": dict(self.modules),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], root: str) -> FileSummary:
        """Read back a ``files`` entry whose path is relative to `root`."""
        return cls(
            path=_join(root, d["path"]),
            format=sys.intern(d.get("format") or ""),
            size=int(d.get("size") or 0),
            tensors=int(d.get("tensors") or 0),
            storage_bytes=int(d.get("storage_bytes") or 0),
            tensor_bytes=int(d.get("tensor_bytes") or 0),
            reclaimable_bytes=int(d.get("reclaimable_bytes") or 0),
            categories=_categories(d.get("categories") or {}),
            parts=_counts(d.get("parts") or {}),
            dtypes=_counts(d.get("dtypes") or {}),
            dtype_bytes=_counts(d.get("dtype_bytes") or {}),
            modules=_counts(d.get("modules") or {}),
            globals=_intern(d.get("globals") or []),
            unsafe_globals=_intern(d.get("unsafe_globals") or []),
            error=d.get("error"),
            layout=d.get("layout"),
        )


@dataclass
class CheckpointSummary:
    """One logical checkpoint as a folder scan keeps it: what the folder view, the curves, the
    text report and ``inspect --json`` show, without its tensor records.

    The folder view reads `layout`, `step`, `epoch`, `complete`, `problems`, `info` (metrics:
    through `checkpoint`, the layouts' `curve_points`), `categories` (weights / optimizer / other
    bytes), `reclaimable_bytes`, `size` and `files`/`file_sizes`; `inspect --json` writes all of
    it (`to_dict`), and `files_read` become its ``files`` entries.
    """

    path: str
    """Absolute path of the file or folder."""
    layout: str
    """Registry name of the layout that recognised it."""
    files: list[str] = field(default_factory=list)
    """Absolute paths of the files that belong to it."""
    file_sizes: list[int] = field(default_factory=list)
    """Bytes on disk of each of `files` (same order)."""
    step: int | None = None
    """Optimizer step where known."""
    epoch: int | None = None
    """Epoch where known."""
    complete: bool = True
    """False when a part is missing or it is still being written."""
    problems: list[str] = field(default_factory=list)
    """One line each: why it is incomplete, or what looks wrong."""
    info: dict[str, Any] = field(default_factory=dict)
    """Framework metadata (metrics, ZeRO stage...), as `Checkpoint.info`."""
    files_read: list[FileSummary] = field(default_factory=list)
    """Its files that a reader read and that hold tensors, unsafe globals or an error."""
    counted_elsewhere: set[str] = field(default_factory=set)
    """Its files reached again under another path (symlink, hardlink): never summed here."""
    # Sums over `files_read` minus `counted_elsewhere` (see `total`).
    categories: dict[str, dict[str, int]] = field(default_factory=_empty_categories)
    """category -> {"tensors": n, "bytes": b}."""
    parts: dict[str, int] = field(default_factory=dict)
    """``category/part`` -> bytes."""
    dtypes: dict[str, int] = field(default_factory=dict)
    """dtype -> number of tensors."""
    size: int = 0
    """Bytes on disk of its files."""
    tensor_bytes: int = 0
    """Sum of numel x element size."""
    storage_bytes: int = 0
    """Bytes of distinct storages."""
    reclaimable_bytes: int = 0
    """Bytes not needed to run the model."""

    def total(self) -> None:
        """Sum its files (those counted elsewhere left out) into the checkpoint-wide fields."""
        cats = _empty_categories()
        parts: dict[str, int] = {}
        dtypes: dict[str, int] = {}
        tensor_bytes = storage = reclaim = 0
        for f in self.files_read:
            if f.path in self.counted_elsewhere:
                continue
            for cat, sums in f.categories.items():
                c = cats.setdefault(cat, {"tensors": 0, "bytes": 0})
                c["tensors"] += sums["tensors"]
                c["bytes"] += sums["bytes"]
            for k, v in f.parts.items():
                parts[k] = parts.get(k, 0) + v
            for k, v in f.dtypes.items():
                dtypes[k] = dtypes.get(k, 0) + v
            tensor_bytes += f.tensor_bytes
            storage += f.storage_bytes
            reclaim += f.reclaimable_bytes
        self.categories = cats
        self.parts = dict(sorted(parts.items()))
        self.dtypes = dict(sorted(dtypes.items()))
        self.tensor_bytes, self.storage_bytes, self.reclaimable_bytes = (
            tensor_bytes,
            storage,
            reclaim,
        )
        self.size = sum(
            s for f, s in zip(self.files, self.file_sizes) if f not in self.counted_elsewhere
        )

    def category_bytes(self, category: str) -> int:
        """Bytes of one category (``weights``, ``optimizer``, ``other``)."""
        return self.categories.get(category, {}).get("bytes", 0)

    def checkpoint(self) -> Checkpoint:
        """The `Checkpoint` the layouts and curves work from (no tensor records needed)."""
        return Checkpoint(
            self.path,
            self.layout,
            files=list(self.files),
            step=self.step,
            epoch=self.epoch,
            complete=self.complete,
            problems=list(self.problems),
            info=self.info,
        )

    def to_dict(self, rel: Rel) -> dict[str, Any]:
        """The ``inspect --json`` ``checkpoints`` entry (plus ``dtypes`` and ``file_sizes``)."""
        return {
            "path": rel(self.path),
            "layout": self.layout,
            "files": [rel(f) for f in self.files],
            "step": self.step,
            "epoch": self.epoch,
            "complete": self.complete,
            "problems": list(self.problems),
            "categories": {k: dict(v) for k, v in self.categories.items()},
            "size": self.size,
            "tensor_bytes": self.tensor_bytes,
            "storage_bytes": self.storage_bytes,
            "reclaimable_bytes": self.reclaimable_bytes,
            "parts": dict(self.parts),
            "info": self.info,
            "dtypes": dict(self.dtypes),
            "file_sizes": list(self.file_sizes),
        }

    @classmethod
    def from_dict(
        cls,
        d: Mapping[str, Any],
        root: str,
        files: Mapping[str, FileSummary] | None = None,
    ) -> CheckpointSummary:
        """Read back a ``checkpoints`` entry whose paths are relative to `root`; `files` (absolute
        path -> `FileSummary`, from the document's ``files``) gives its per-file sums."""
        paths = [_join(root, f) for f in d.get("files") or []]
        sizes = [int(s) for s in d.get("file_sizes") or []]
        if len(sizes) != len(paths):
            sizes = [0] * len(paths)
        s = cls(
            path=_join(root, d["path"]),
            layout=sys.intern(d.get("layout") or "torch"),
            files=paths,
            file_sizes=sizes,
            step=d.get("step"),
            epoch=d.get("epoch"),
            complete=bool(d.get("complete", True)),
            problems=list(d.get("problems") or []),
            info=dict(d.get("info") or {}),
            files_read=[files[p] for p in paths if files and p in files],
            categories=_categories(d.get("categories") or {}),
            parts=_counts(d.get("parts") or {}),
            dtypes=_counts(d.get("dtypes") or {}),
            size=int(d.get("size") or 0),
            tensor_bytes=int(d.get("tensor_bytes") or 0),
            storage_bytes=int(d.get("storage_bytes") or 0),
            reclaimable_bytes=int(d.get("reclaimable_bytes") or 0),
        )
        return s


LIGHT = (
    "path",
    "layout",
    "files",
    "file_sizes",
    "step",
    "epoch",
    "complete",
    "problems",
    "info",
    "categories",
    "size",
    "tensor_bytes",
    "storage_bytes",
    "reclaimable_bytes",
)
"""What a light summary keeps: no per-file sums, parts or dtypes."""


def to_light(s: CheckpointSummary, base: str) -> dict[str, Any]:
    """The scan cache's light row of a summary; `base` (a folder, ending with a separator) is
    cut off the paths below it, which keeps the row small (decoding it is what a cached folder
    view spends its time on)."""
    n = len(base)

    def short(p: str) -> str:
        return p[n:] if p.startswith(base) else p

    d = s.to_dict(short)
    return {k: d[k] for k in LIGHT}


def from_light(d: Mapping[str, Any], base: str) -> CheckpointSummary:
    """A summary back from a scan cache's light row (its own ``to_dict`` without ``parts`` and
    ``dtypes``, paths relative to `base` where they are below it: see `to_light`): what
    `CheckpointSummary.from_dict` does, trusting it."""
    cats = _empty_categories()
    for cat, sums in d["categories"].items():
        cats[cat if cat in cats else sys.intern(cat)] = sums
    isabs = os.path.isabs
    path = d["path"]
    return CheckpointSummary(
        path if isabs(path) else base + path,
        sys.intern(d["layout"]),
        [f if isabs(f) else base + f for f in d["files"]],
        d["file_sizes"],
        d["step"],
        d["epoch"],
        d["complete"],
        d["problems"],
        d["info"],
        categories=cats,
        size=d["size"],
        tensor_bytes=d["tensor_bytes"],
        storage_bytes=d["storage_bytes"],
        reclaimable_bytes=d["reclaimable_bytes"],
    )


def _file_summary(inv: Inventory, path: str) -> FileSummary | None:
    """A read file's sums, or None when it holds nothing to report (no tensors, no error)."""
    index = inv.files.get(path)
    if index is None or not (index.tensors or index.unsafe_globals or index.error):
        return None
    b = inv.file_breakdown(path)
    return FileSummary(
        path=path,
        format=index.format,
        size=index.size,
        tensors=len(index.tensors),
        storage_bytes=index.storage_bytes,
        tensor_bytes=b.bytes,
        reclaimable_bytes=b.reclaimable,
        categories={k: dict(v) for k, v in b.categories.items()},
        parts=dict(sorted(b.parts.items())),
        dtypes=dict(sorted(b.dtypes.items())),
        dtype_bytes=dict(sorted(b.dtype_bytes.items())),
        modules=dict(b.modules.most_common(12)),
        globals=list(index.globals),
        unsafe_globals=list(index.unsafe_globals),
        error=index.error,
        layout=inv.layout_of.get(path),
    )


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def summarize(inv: Inventory) -> list[CheckpointSummary]:
    """One summary per checkpoint (files reached twice counted once: see `count_elsewhere`)."""
    out = []
    for ckpt in inv.checkpoints:
        s = CheckpointSummary(
            path=ckpt.path,
            layout=ckpt.layout,
            files=list(ckpt.files),
            file_sizes=[_size(f) for f in ckpt.files],
            step=ckpt.step,
            epoch=ckpt.epoch,
            complete=ckpt.complete,
            problems=list(ckpt.problems),
            info=ckpt.info,
        )
        s.files_read = [fs for f in ckpt.files if (fs := _file_summary(inv, f)) is not None]
        count_elsewhere(s, inv.same_as, inv.rel)
        out.append(s)
    return out


def count_elsewhere(s: CheckpointSummary, same_as: dict[str, str], rel: Rel) -> None:
    """Leave out of a summary's sums its files counted under another path; one made only of
    such files says so (``info["same_file_as"]``: never averaged or totalled)."""
    s.counted_elsewhere = {f for f in s.files if f in same_as}
    s.info.pop("same_file_as", None)
    if s.files and len(s.counted_elsewhere) == len(s.files):
        s.info["same_file_as"] = rel(same_as[s.files[0]])
    s.total()
