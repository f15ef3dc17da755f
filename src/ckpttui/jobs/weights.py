"""One checkpoint's weight tensors, read in place, under their state-dict names.

`open_weights` opens one checkpoint (a file, or a checkpoint folder: HF-style weights files, or one
file per recoverable module) as its weight tensors under their state-dict names, read in place;
optimizer and other training state are never touched. What a folder holds is the layout's answer
(`Layout.weights_in_shards`, `Layout.recoverables`, `Layout.weights_refusal`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ckpttui.accounting import NEEDED_OTHER_PARTS, classify
from ckpttui.formats import read_file
from ckpttui.inventory import Inventory
from ckpttui.jobs.events import JobError
from ckpttui.jobs.merge import find_hf_shards
from ckpttui.jobs.select import scan_or_fail
from ckpttui.jobs.source import TensorSource
from ckpttui.jobs.zero import PlannedSource, consolidated_in, open_zero, plan_zero
from ckpttui.layouts import DIR_LAYOUTS, Layout, layout_named
from ckpttui.layouts.base import natural_key
from ckpttui.records import Category, Checkpoint, TensorRecord
from ckpttui.units import human_bytes

if TYPE_CHECKING:
    import torch


@dataclass
class WeightSet:
    """The weight tensors of one checkpoint, read in place, under their state-dict names."""

    path: Path
    """The checkpoint as given (file or folder)."""
    layout: str
    """Its layout's registry name (see `ckpttui.layouts.layout_named`)."""
    files: list[Path]
    """The files the weights come from."""
    names: list[str]
    """State-dict names, in file order."""
    entries: dict[str, tuple[TensorSource | PlannedSource, TensorRecord]]
    """Where each name's values are (a file, or a ZeRO folder's rank files, consolidated)."""
    aliases: dict[str, str] = field(default_factory=dict)
    """Names that are the very same tensor as an earlier name (tied weights): alias -> owner."""
    container: tuple[str, ...] = ()
    """Key path of the state dict inside its (single) torch file; () when the file is the dict."""
    skeleton: Any = None
    """The single torch file's unpickled top-level object, for metadata; None otherwise."""
    notes: list[str] = field(default_factory=list)
    """What was left out (optimizer and other state), one line each."""
    left: dict[str, list[int]] = field(default_factory=dict)
    """Category -> [tensors, bytes] left out of the files read (optimizer and other state);
    `left_out` words it."""
    companions: list[Path] = field(default_factory=list)
    """Files of a checkpoint folder of recoverables that a folder output carries as they are: all
    but the chosen weights files and the optimizer's (sidecars, counters, normaliser statistics)."""
    prefixed: bool = False
    """Names carry their recoverable's file stem (``model.``): several weights files in one set."""

    @property
    def sources(self) -> list[TensorSource]:
        """The mapped files."""
        seen: dict[int, TensorSource | PlannedSource] = {}
        for source, _ in self.entries.values():
            seen.setdefault(id(source), source)
        # the writers only release() them, which a PlannedSource does as a file's source does
        return cast("list[TensorSource]", list(seen.values()))

    def record(self, name: str) -> TensorRecord:
        """The record of a name."""
        return self.entries[name][1]

    def tensor(self, name: str) -> torch.Tensor:
        """The values of a name, viewing the mapped file."""
        source, rec = self.entries[name]
        return source.tensor(rec)

    def release(self, name: str) -> None:
        """Give back the pages read for a name (see `TensorSource.release`)."""
        self.entries[name][0].release()

    def close(self) -> None:
        """Unmap every file."""
        for source in self.sources:
            source.close()


def _find(inv: Inventory, path: Path) -> Checkpoint | None:
    target = os.path.abspath(path)
    return next((c for c in inv.checkpoints if c.path == target), None)


def open_weights(
    path: str | os.PathLike[str],
    *,
    recoverable: str | None = None,
    inventory: Inventory | None = None,
) -> WeightSet:
    """Open a checkpoint's weights (category weights in our accounting) for reading in place.

    A folder of recoverables with several weights files (``model.ckpt``, ``wav2vec2.ckpt``)
    gives each file's names prefixed by its recoverable name, unless `recoverable` picks one.
    """
    p = Path(path)
    if not p.exists():
        raise JobError(f"{p}: no such file or folder")
    inv = inventory if inventory is not None else scan_or_fail(p)
    ckpt = _find(inv, p)
    if ckpt is None and p.is_file():
        index = read_file(p)
        if index.error:
            raise JobError(f"{p}: {index.error}")
        key = os.path.abspath(p)
        inv.files[key] = index
        inv.records[key] = classify("torch", p.name, index)
        ckpt = Checkpoint(key, "torch", files=[key])
    if ckpt is None:
        inside = [inv.rel(c.path) for c in inv.checkpoints]
        raise JobError(
            f"{p}: not one checkpoint"
            + (
                f" (it holds {len(inside)}: " + ", ".join(inside[:4]) + ")"
                if inside
                else " (none found inside)"
            )
        )
    layout = layout_named(ckpt.layout)
    partitioned = bool(layout.consolidated) and p.is_dir()
    if layout.weights_refusal is not None:
        raise JobError(f"{p}: {layout.weights_refusal}")
    if not ckpt.complete or ckpt.info.get("dangerous"):
        raise JobError(f"{p}: " + ("; ".join(ckpt.problems[:2]) or "incomplete checkpoint"))
    done = consolidated_in(p, layout.consolidated) if partitioned else None
    if done is not None:  # reclaim consolidated the weights into one file
        files = [done]
    elif partitioned and any(map(layout.reclaim_removes, (Path(f).name for f in ckpt.files))):
        return _open_partitioned(p, ckpt)  # gathered from the rank files as merge does
    else:  # (a folder saved without optimizer files holds its weights whole: ZeRO stage 0)
        files = _weight_files(inv, ckpt, p, recoverable)
    prefixed = layout.recoverables and len(files) > 1
    ws = WeightSet(p, ckpt.layout, files, [], {}, prefixed=prefixed)
    if layout.recoverables and p.is_dir():
        ws.companions = _companions(inv, ckpt, files)
    if prefixed:
        ws.notes.append(
            "names prefixed by their recoverable: " + ", ".join(f.stem + "." for f in files)
        )
    try:
        for file in files:
            _add_file(ws, inv, file, f"{file.stem}." if prefixed else "")
    except BaseException:
        ws.close()
        raise
    if len(files) > 1 or partitioned:  # a ZeRO folder's weights: a bare state dict, as
        ws.container, ws.skeleton = (), None  # merge and reclaim write them
    if not ws.names:
        ws.close()
        raise JobError(f"{p}: no weight tensors found")
    return ws


def _open_partitioned(p: Path, ckpt: Checkpoint) -> WeightSet:
    """The consolidated weights of a ZeRO folder, gathered from its rank files when read."""
    zero = open_zero(p)
    try:
        plan = plan_zero(zero)
        source = PlannedSource(zero, plan)
    except BaseException:
        zero.close()
        raise
    ws = WeightSet(p, ckpt.layout, zero.files, [], {})
    for rec, planned in zip(source.records, plan, strict=True):
        ws.names.append(rec.name)
        ws.entries[rec.name] = (source, rec)
        if planned.alias_of is not None:
            ws.aliases[rec.name] = planned.alias_of
    ws.notes.append(
        f"weights consolidated from the ZeRO-{zero.stage} rank files of {zero.world_size} "
        "rank(s), as merge does"
    )
    ws.notes.extend(zero.notes)
    return ws


def _weight_files(inv: Inventory, ckpt: Checkpoint, p: Path, recoverable: str | None) -> list[Path]:
    if p.is_dir() and layout_named(ckpt.layout).weights_in_shards:
        try:
            return find_hf_shards(p)[1]
        except JobError:
            inside = _absorbed(ckpt, p)
            if inside is not None:
                raise JobError(
                    f"{p}: the weights are in a {inside.title} folder inside; "
                    "consolidate it with merge first"
                ) from None
            raise
    files = [
        Path(f)
        for f in ckpt.files
        if any(r.category is Category.WEIGHTS for r in inv.records.get(f, []))
    ]
    if not files:  # a file of state needed to run (normaliser statistics) and nothing else
        files = [Path(f) for f in ckpt.files if any(map(_needed, inv.records.get(f, [])))]
    if recoverable is not None:
        wanted = [f for f in files if f.stem == recoverable]
        if not wanted:
            raise JobError(
                f"{p}: no weights recoverable {recoverable!r} (has "
                + (", ".join(f.stem for f in files) or "none")
                + ")"
            )
        files = wanted
    if not files:
        raise JobError(f"{p}: no weight tensors found")
    return sorted(files, key=lambda f: natural_key(f.name))


def left_out(sets: Sequence[WeightSet], kept: Sequence[tuple[int, int]] = ()) -> list[str]:
    """One line per category of what the inputs leave out; `kept` are (count, bytes) of
    non-weight tensors the output carries anyway (metadata tensors, counted as other)."""
    totals: dict[str, list[int]] = {}
    for ws in sets:
        for cat, (n, b) in ws.left.items():
            sums = totals.setdefault(cat, [0, 0])
            sums[0] += n
            sums[1] += b
    if kept and Category.OTHER.value in totals:
        totals[Category.OTHER.value][0] -= sum(n for n, _ in kept)
        totals[Category.OTHER.value][1] -= sum(b for _, b in kept)
    where = f" of the {len(sets)} inputs" if len(sets) > 1 else ""
    return [
        f"left out {n} {cat} tensors ({human_bytes(b)}){where}"
        for cat, (n, b) in totals.items()
        if n > 0
    ]


def _needed(rec: TensorRecord) -> bool:
    """State that running the model needs besides its weights (normaliser statistics)."""
    return rec.category is Category.OTHER and rec.part in NEEDED_OTHER_PARTS


def _companions(inv: Inventory, ckpt: Checkpoint, weights: list[Path]) -> list[Path]:
    """The checkpoint's files that are neither the chosen weights nor optimizer state (another
    module's weights, when one recoverable is chosen, is carried as it is)."""
    taken = {os.path.abspath(f) for f in weights}
    out = []
    for f in ckpt.files:
        records = inv.records.get(f, [])
        if os.path.abspath(f) in taken or any(r.category is Category.OPTIMIZER for r in records):
            continue
        out.append(Path(f))
    return out


def _absorbed(ckpt: Checkpoint, folder: Path) -> Layout | None:
    """The layout of a checkpoint folder nested in `folder` that its own layout absorbs."""
    absorbs = layout_named(ckpt.layout).absorbs
    for sub in sorted(q for q in folder.iterdir() if q.is_dir()):
        names = {q.name for q in sub.iterdir()}
        for inner in DIR_LAYOUTS:
            if inner.name in absorbs and inner.claims(sub, names):
                return layout_named(inner.name)
    return None


def _add_file(ws: WeightSet, inv: Inventory, file: Path, prefix: str) -> None:
    key = os.path.abspath(file)
    index = inv.files.get(key) or read_file(file)
    records = inv.records.get(key) or classify(ws.layout, file.name, index)
    source = TensorSource(file, index)
    weights = [r for r in records if r.category is Category.WEIGHTS]
    if not weights and len(ws.files) == 1:
        # a file of state needed to run (normaliser statistics) and nothing else: that is what
        # exporting it means
        weights = [r for r in records if _needed(r)]
    taken_ids = {id(r) for r in weights}  # by identity: comparing records is slow (thousands)
    for r in records:
        if id(r) not in taken_ids:
            sums = ws.left.setdefault(r.category.value, [0, 0])
            sums[0] += 1
            sums[1] += r.nbytes
    container = _common_prefix([r.path[:-1] for r in weights])
    owners: dict[tuple[Any, ...], str] = {}
    taken = {name: src.path for name, (src, _) in ws.entries.items()}
    for rec in weights:
        name = prefix + ".".join(rec.path[len(container) :])
        if name in taken:
            source.close()
            raise JobError(f"{file}: tensor {name!r} is also in {taken[name]}")
        taken[name] = file
        ws.names.append(name)
        ws.entries[name] = (source, rec)
        if index.format != "safetensors":
            ident = (rec.storage, rec.storage_offset, rec.shape, rec.stride, rec.dtype)
            owner = owners.setdefault(ident, name)
            if owner != name:
                ws.aliases[name] = owner
    if not weights:
        source.close()
    ws.container, ws.skeleton = container, index.data if index.format != "safetensors" else None


def _common_prefix(paths: list[tuple[str, ...]]) -> tuple[str, ...]:
    if not paths:
        return ()
    first = paths[0]
    n = len(first)
    for other in paths[1:]:
        n = min(n, len(other))
        for i in range(n):
            if other[i] != first[i]:
                n = i
                break
    return first[:n]
