"""Reclaim: slim the checkpoints of a run in place (optimizer state dropped), keeping some whole.

`plan_reclaim` decides, from names, headers and pickles only (no torch): each checkpoint is kept
(the newest `keep_last`, the best `keep_best` by the framework's metric, a symlink's target,
already slim), refused (incomplete, being written by a running job, modified in the last few
seconds, unsafe to read), or slimmed, with the bytes it holds, will hold and will free.
`reclaim` is the job: it plans again (a stale plan is never trusted) and slims item by item.

How each kind is slimmed, never losing it (kill -9 at any instant leaves each checkpoint either
original or slimmed and verified):

* a file: the slim ``.pt`` in its own layout (`jobs.slim.slim_layout` with the keys to keep,
  streamed by `jobs.export.write_torch`) is written beside it as ``NAME.tmp-<pid>-XXXXXXXX``,
  fsynced, read back, and swapped over the original with ``renameat2(RENAME_EXCHANGE)`` only if
  the original is still what was planned (`jobs.atomic.AtomicOutput` with ``force``); the old
  bytes, now under the temporary name, are then removed. A symlink is never replaced: its target
  is slimmed (once, however many links lead to it).
* a folder: a slim copy is built beside it under the temporary name, made of hard links of every
  kept file (no bytes copied) plus any new file (a ZeRO folder's consolidated weights), fsynced and
  read back, then exchanged with the original the same way; the old folder is then removed.

Swapping a whole copy rather than keeping a journal means there is no state to replay: at every
instant the checkpoint's name holds a complete checkpoint (old or new), and what a kill leaves is
one temporary file or folder named as `ckpttui clean` (and the next reclaim) recognise and remove.
A rerun plans again: slimmed checkpoints are "already slim", the others are slimmed.

Space is freed only when the last link to a file goes: a file with other hard links is rewritten
under its own name (the other names keep the original bytes), and the plan says it frees nothing.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ckpttui.accounting import NEEDED_OTHER_PARTS, OPTIMIZER_KEYS, file_role, is_optimizer_state
from ckpttui.inventory import Inventory
from ckpttui.jobs.events import Event, JobError, check_cancel
from ckpttui.jobs.owner import (
    TEMP_RE,
    leftover,
    lock_path,
    remove_leftover,
    stale_lock,
    temp_status,
)
from ckpttui.jobs.select import candidates, scan_or_fail
from ckpttui.layouts import RankError, layout_named
from ckpttui.layouts.base import WRITTEN_BY
from ckpttui.records import Category, Checkpoint, TensorRecord
from ckpttui.units import human_bytes

DROPS = ("optimizer", "training")
RECENT = 5.0
"""Seconds: a checkpoint modified more recently may still be being written; it is refused."""
JOB = "reclaim"


@dataclass
class PlanItem:
    """One checkpoint (file or folder) and what reclaim does with it."""

    path: str
    """The checkpoint as given or found (a symlink's target when a link was given)."""
    action: str
    """``keep``, ``slim`` or ``refuse``."""
    reason: str
    """Why: ``newest``, ``best valid.acc=0.91``, ``being written by pid 123``, ``optimizer``..."""
    size: int
    """Bytes on disk now (a file with several names counted once)."""
    after: int
    """Estimated bytes after slimming (== size for keep and refuse)."""
    freed: int
    """Bytes actually freed (0 when another hard link keeps the data)."""
    writes: list[str] = field(default_factory=list)
    """Files that will be written (the checkpoint itself, or new files in its folder)."""
    removes: list[str] = field(default_factory=list)
    """Files that will be removed."""
    notes: list[str] = field(default_factory=list)
    """Hard link and symlink notes, what is dropped, leftovers removed."""
    layout: str = ""
    """Registry name of its layout."""
    keep_keys: list[str] | None = None
    """A file: the top-level keys kept beside the state dict (None: not a rewritten file)."""
    leftovers: list[str] = field(default_factory=list)
    """Abandoned temporary outputs of this checkpoint (an earlier reclaim killed) to remove."""
    new_bytes: int = 0
    """Bytes of new files the slim folder needs (its consolidated weights); free space needed."""


@dataclass
class ReclaimPlan:
    """What a reclaim will do, checkpoint by checkpoint, in training order."""

    items: list[PlanItem]
    """Every checkpoint considered."""
    drop: str
    """``optimizer`` or ``training`` (also scheduler, scaler, rng, EMA)."""
    keep_last: int
    """Newest checkpoints kept whole."""
    keep_best: int
    """Best checkpoints (by the framework's metric) kept whole."""
    metric: str | None
    """The metric named, or None for the framework's own."""
    notes: list[str] = field(default_factory=list)
    """Run-level notes (no metric to rank by, checkpoints skipped...)."""

    @property
    def total_freed(self) -> int:
        """Bytes freed by the whole reclaim."""
        return sum(i.freed for i in self.items if i.action == "slim")

    @property
    def slimmed(self) -> list[PlanItem]:
        """The items that will be slimmed."""
        return [i for i in self.items if i.action == "slim"]

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` shape: the options, each item, and the total freed."""
        return {
            "drop": self.drop,
            "keep_last": self.keep_last,
            "keep_best": self.keep_best,
            "metric": self.metric,
            "items": [
                {
                    k: v
                    for k, v in asdict(i).items()
                    if k not in ("keep_keys", "leftovers", "new_bytes")
                }
                for i in self.items
            ],
            "total_freed": self.total_freed,
            "notes": list(self.notes),
        }

    def lines(self) -> list[str]:
        """The plan for a terminal: one line per checkpoint, then the total."""
        width = max((len(Path(i.path).name) for i in self.items), default=0)
        out = []
        for i in self.items:
            name = Path(i.path).name.ljust(width)
            if i.action == "slim":
                out.append(
                    f"slim    {name}  {human_bytes(i.size)} -> {human_bytes(i.after)}  "
                    f"frees {human_bytes(i.freed)}  ({i.reason})"
                )
            else:
                out.append(f"{i.action:<7} {name}  {human_bytes(i.size)}  {i.reason}")
            out.extend(f"          {note}" for note in i.notes)
        out.extend(f"note: {n}" for n in self.notes)
        n = len(self.slimmed)
        out.append(
            f"total: {n} checkpoint{'s' if n != 1 else ''} slimmed, "
            f"{human_bytes(self.total_freed)} freed"
        )
        return out


# ------------------------------------------------------------------------------- planning


def _merge(into: Inventory, other: Inventory) -> None:
    into.files.update(other.files)
    into.records.update(other.records)
    into.checkpoints.extend(other.checkpoints)
    into.errors.extend(other.errors)
    into.layout_of.update(other.layout_of)
    into.inodes.update(other.inodes)
    into.same_as.update(other.same_as)


def _own(inv: Inventory, path: Path) -> Checkpoint | None:
    target = os.path.abspath(path)
    return next((c for c in inv.checkpoints if c.path == target), None)


def _gather(
    paths: Sequence[Path], notes: list[str]
) -> tuple[Inventory, list[Checkpoint], Path, dict[str, str]]:
    """The inventory, the checkpoints to consider, the root, and links given -> their targets."""
    if not paths:
        raise JobError("reclaim: give a run folder or checkpoints")
    for p in paths:
        if not os.path.lexists(p):
            raise JobError(f"{p}: no such file or folder")
    links: dict[str, str] = {}
    if len(paths) == 1 and paths[0].is_dir() and not paths[0].is_symlink():
        root = paths[0]
        inv = scan_or_fail(root)
        own = _own(inv, root)
        inside = [c for c in inv.checkpoints if c is not own and layout_named(c.layout).training]
        if own is None or inside:  # a run folder (an HF output_dir is also a model folder)
            ckpts = _run(inv, root)
            taken = {c.path for c in ckpts}
            others = [
                inv.rel(c.path)
                for c in inv.checkpoints
                if c.path not in taken and "temp_owner" not in c.info and c is not own
            ]
            if others:
                notes.append(
                    f"not regular training saves, left alone (give them as paths to slim them): "
                    f"{', '.join(others[:6])}{' ...' if len(others) > 6 else ''}"
                )
            return inv, ckpts, root, links
    inv = Inventory(Path(os.path.commonpath([os.path.abspath(p) for p in paths])))
    chosen: list[Checkpoint] = []
    seen: set[str] = set()
    for p in paths:
        real = Path(os.path.realpath(p))
        if real != Path(os.path.abspath(p)):
            links[str(real)] = str(p)
        if str(real) in seen:
            continue
        seen.add(str(real))
        part = scan_or_fail(real)
        _merge(inv, part)
        ckpt = _own(part, real)
        if ckpt is None:
            raise JobError(f"{p}: not one checkpoint (give a run folder, or checkpoints)")
        chosen.append(ckpt)
    layouts = {c.layout for c in chosen}
    if len(layouts) == 1:
        layout = layout_named(chosen[0].layout)
        chosen.sort(key=layout.order)
    return inv, chosen, inv.root, links


def _run(inv: Inventory, root: Path) -> list[Checkpoint]:
    """The run's checkpoints in training order (incomplete ones too: they are refused)."""
    found = [c for c in candidates(inv, root) if "temp_owner" not in c.info]
    if not found:
        raise JobError(f"{root}: no training checkpoints found")
    return sorted(found, key=layout_named(found[0].layout).order)


def _keepers(
    inv: Inventory,
    ckpts: list[Checkpoint],
    root: Path,
    keep_last: int,
    keep_best: int,
    metric: str | None,
    notes: list[str],
) -> dict[str, str]:
    """Real path -> why it is kept whole (newest, best, a symlink's target); the keep rules apply
    within each run (layout and folder) of the checkpoints."""
    kept: dict[str, str] = {}

    def keep(path: str, why: str) -> None:
        key = os.path.realpath(path)
        kept[key] = f"{kept[key]}, {why}" if key in kept else why

    runs: dict[tuple[str, str], list[Checkpoint]] = {}
    for c in ckpts:
        if c.complete:
            runs.setdefault((c.layout, str(Path(c.path).parent)), []).append(c)
    for (name, folder), usable in runs.items():
        layout = layout_named(name)
        if keep_last > 0:
            pool, _ = layout.last_pool(usable)
            last = pool[-keep_last:]
            for c in last:
                keep(c.path, "newest" if len(last) == 1 else f"newest {len(last)}")
        if keep_best > 0:
            siblings = [c for c in inv.checkpoints if c.layout == layout.name]
            where = root if len(runs) == 1 else Path(folder)
            try:
                ranked, rule = layout.rank(usable, siblings, inv.files, metric, None, where)
            except RankError as exc:
                if metric is not None:
                    raise JobError(str(exc)) from None
                notes.append(f"no best kept: {exc}")
                continue
            for path, value in ranked[:keep_best]:
                keep(str(path), f"best by {rule.split(' (', 1)[0]} ({value:g})")
    for c in inv.checkpoints:  # a named link (valid.acc.best.pth -> 3epoch.pth) keeps its target
        if c.info.get("symlink_to"):
            keep(c.path, f"{Path(c.path).name} links to it")
    return kept


def _disk(path: Path) -> int:
    """Bytes on disk of a checkpoint, a file with several names in it counted once."""
    seen: set[tuple[int, int]] = set()
    size = 0
    for f in _files(path):
        st = os.lstat(f)
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            size += st.st_size
    return size


def _files(path: Path) -> list[Path]:
    """Regular files of a checkpoint (the file, or every file under the folder; links not
    followed)."""
    if not path.is_dir():
        return [path]
    out = []
    for folder, _dirs, names in os.walk(path):
        for name in names:
            full = Path(folder) / name
            if stat.S_ISREG(os.lstat(full).st_mode):
                out.append(full)
    return sorted(out)


def _busy(path: Path) -> tuple[str | None, list[str]]:
    """Why a checkpoint may still be being written (None if not), and abandoned temporaries of it
    (an interrupted job's, removed by the reclaim)."""
    abandoned = []
    try:
        siblings = list(os.scandir(path.parent))
    except OSError as exc:
        return f"cannot list {path.parent}: {exc.strerror}", []
    for entry in siblings:
        m = TEMP_RE.match(entry.name)
        if m is None or m["target"] != path.name:
            continue
        status = temp_status(entry.path)
        if status is not None and status.state != "abandoned":
            return status.message, []
        if leftover(Path(entry.path)) is not None:
            abandoned.append(entry.path)
    lock = lock_path(path)
    if os.path.lexists(lock) and stale_lock(lock):
        abandoned.append(str(lock))  # removed after the temporary output it names
    newest = max((os.lstat(f).st_mtime for f in _files(path)), default=0.0)
    age = time.time() - newest
    if age < RECENT:
        return f"modified {max(age, 0):.0f}s ago: may still be being written", abandoned
    return None, abandoned


def _file_keys(
    inv: Inventory, ckpt: Checkpoint, drop: str
) -> tuple[list[str] | None, list[TensorRecord], list[str]]:
    """A single-file checkpoint: the top-level keys kept beside its weights, the records dropped,
    and the keys dropped; (None, [], []) when its shape cannot be kept (nothing is dropped)."""
    f = ckpt.path
    index = inv.files.get(f)
    records = inv.records.get(f, [])
    if index is None or not isinstance(index.data, dict):
        return None, [], []
    weights = [r for r in records if r.category is Category.WEIGHTS]
    tops = {r.path[0] for r in weights if len(r.path) > 1}
    if len(tops) != 1 or any(len(r.path) == 1 for r in weights):
        return None, [], []  # a bare state dict, or weights in several places: nothing to drop
    container = next(iter(tops))
    skeleton = index.data
    optim = {
        str(k)
        for k, v in skeleton.items()
        if k in OPTIMIZER_KEYS or is_optimizer_state(v) or _holds(records, str(k), _is_optim)
    }
    if drop == "optimizer":
        keep = [str(k) for k in skeleton if str(k) != container and str(k) not in optim]
    else:
        contract = layout_named(ckpt.layout).contract.keep or ()
        keep = [
            str(k)
            for k in skeleton
            if str(k) != container
            and str(k) not in optim
            and (str(k) in contract or _holds(records, str(k), _needed))
        ]
    kept = {container, *keep}
    dropped = [r for r in records if r.path and r.path[0] not in kept]
    gone = [str(k) for k in skeleton if str(k) not in kept]
    return keep, dropped, gone


def _holds(records: list[TensorRecord], key: str, test: Any) -> bool:
    return any(r.path and r.path[0] == key and test(r) for r in records)


def _is_optim(r: TensorRecord) -> bool:
    return r.category is Category.OPTIMIZER


def _needed(r: TensorRecord) -> bool:
    return r.category is Category.WEIGHTS or (
        r.category is Category.OTHER and r.part in NEEDED_OTHER_PARTS
    )


def _removable(inv: Inventory, layout: str, f: str, drop: str) -> bool:
    """A whole file of a checkpoint folder that slimming removes: optimizer state by its name or
    all its tensors (with ``training``, also training-only state: scheduler, scaler, rng)."""
    records = inv.records.get(f) or []
    role = file_role(layout, Path(f).name)
    if role is Category.OPTIMIZER or (records and all(map(_is_optim, records))):
        return True
    if drop == "optimizer" or any(map(_needed, records)):
        return False
    index = inv.files.get(f)
    if index is None or index.format == "text":
        return False  # counters and YAML sidecars: a few bytes the framework reads for its epoch
    return bool(records) or (role is Category.OTHER and "normaliz" not in Path(f).name.lower())


def _plan_file(inv: Inventory, ckpt: Checkpoint, path: Path, drop: str, item: PlanItem) -> None:
    keep, dropped, gone = _file_keys(inv, ckpt, drop)
    index = inv.files[ckpt.path]
    kept_storages = {
        r.storage for r in inv.records.get(ckpt.path, []) if r not in dropped and r.storage
    }
    only_dropped = {r.storage for r in dropped if r.storage is not None} - kept_storages
    saved = sum(index.storages.get(k, 0) for k in only_dropped)
    saved += sum(r.nbytes for r in dropped if r.storage is None)
    if keep is None or saved == 0:
        item.action, item.reason = "keep", "already slim (nothing to reclaim)"
        return
    item.action = "slim"
    item.reason = f"drops {', '.join(gone)}"
    item.after = max(item.size - saved, 0)
    item.writes = [str(path)]
    item.keep_keys = keep
    st = os.stat(path)
    if st.st_nlink > 1:
        item.freed = 0
        item.notes.append(
            f"{st.st_nlink - 1} other hard link(s) keep the original bytes: nothing is freed "
            "until the last one goes"
        )
    else:
        item.freed = item.size - item.after


def _plan_folder(inv: Inventory, ckpt: Checkpoint, path: Path, drop: str, item: PlanItem) -> None:
    removes = [
        Path(f)
        for f in ckpt.files
        if Path(f).is_relative_to(path)
        and not os.path.islink(f)
        and _removable(inv, ckpt.layout, f, drop)
    ]
    if not removes:
        item.action, item.reason = "keep", "already slim (nothing to reclaim)"
        return
    item.action = "slim"
    item.reason = f"removes {len(removes)} file{'s' if len(removes) > 1 else ''}"
    item.removes = [str(f) for f in removes]
    item.writes = []
    gone = 0
    linked = []
    for f in removes:
        st = os.lstat(f)
        item.after -= st.st_size
        if st.st_nlink == 1:
            gone += st.st_size
        else:
            linked.append(f.name)
    item.freed = gone
    if linked:
        item.notes.append(
            f"{', '.join(linked)}: other hard links keep the bytes; nothing freed for them"
        )


def _plan_consolidated(inv: Inventory, ckpt: Checkpoint, path: Path, item: PlanItem) -> None:
    """A folder whose weights are partitioned in its optimizer files: the consolidated weights
    are written into it (the layout names the file) before those files go."""
    layout = layout_named(ckpt.layout)
    removes = sorted(
        Path(f)
        for f in ckpt.files
        if Path(f).parent == path and not os.path.islink(f) and layout.reclaim_removes(Path(f).name)
    )
    if not removes:
        item.action, item.reason = "keep", "already slim (nothing to reclaim)"
        return
    out = path / layout.consolidated
    if os.path.lexists(out):
        item.action, item.reason = "refuse", f"{out.name} exists beside its optimizer files"
        return
    masters = sum(
        r.nbytes for f in removes for r in inv.records.get(str(f), []) if r.part == "master"
    )
    removed = freed = 0
    for f in removes:
        st = os.lstat(f)
        removed += st.st_size
        freed += st.st_size if st.st_nlink == 1 else 0
    item.action = "slim"
    item.reason = f"weights consolidated into {out.name}; {len(removes)} optimizer files removed"
    item.writes = [str(out)]
    item.removes = [str(f) for f in removes]
    item.after = item.size - removed + masters
    item.new_bytes = masters
    item.freed = max(freed - masters, 0)
    item.notes.append(
        f"writes {out.name} (consolidated fp32 weights, named as {layout.title}'s own tool "
        "names them), "
        f"removes {', '.join(f.name for f in removes[:2])}{' ...' if len(removes) > 2 else ''}"
    )


def plan_reclaim(
    paths: Sequence[str | os.PathLike[str]],
    *,
    keep_last: int = 1,
    keep_best: int = 1,
    metric: str | None = None,
    drop: str = "optimizer",
) -> ReclaimPlan:
    """What reclaiming a run folder (one path) or the given checkpoints would do; reads names,
    headers and pickles only (see the module)."""
    if drop not in DROPS:
        raise JobError(f"--drop must be optimizer or training, not {drop!r}")
    if keep_last < 0 or keep_best < 0:
        raise JobError("--keep-last and --keep-best must be 0 or more")
    plan = ReclaimPlan([], drop, keep_last, keep_best, metric)
    inv, ckpts, root, links = _gather([Path(p) for p in paths], plan.notes)
    kept = _keepers(inv, ckpts, root, keep_last, keep_best, metric, plan.notes)
    for ckpt in ckpts:
        path = Path(ckpt.path)
        size = _disk(path)
        item = PlanItem(str(path), "keep", "", size, size, 0, layout=ckpt.layout)
        if str(path) in links:
            item.notes.append(f"given as the link {links[str(path)]}; the link is kept")
        plan.items.append(item)
        busy, abandoned = _busy(path)
        item.leftovers = abandoned
        if abandoned:
            item.notes.append(
                "an interrupted job left "
                + ", ".join(Path(a).name for a in abandoned)
                + ": removed first"
            )
        why = kept.get(os.path.realpath(ckpt.path))
        if why is not None:
            item.reason = why
            continue
        if not ckpt.complete or ckpt.info.get("dangerous"):
            item.action = "refuse"
            item.reason = "; ".join(ckpt.problems[:2]) or "incomplete"
            continue
        layout = layout_named(ckpt.layout)
        if path.is_dir() and layout.consolidated:
            _plan_consolidated(inv, ckpt, path, item)
        elif path.is_dir():
            if layout.weights_refusal is not None:
                item.action, item.reason = "refuse", layout.weights_refusal
                continue
            _plan_folder(inv, ckpt, path, drop, item)
        elif ckpt.path in inv.files:
            _plan_file(inv, ckpt, path, drop, item)
        else:
            item.action, item.reason = "refuse", "not read (no index of its file)"
        if item.action == "slim" and busy is not None:
            item.action, item.reason = "refuse", busy
            item.after, item.freed, item.writes, item.removes = item.size, 0, [], []
    return plan


# ------------------------------------------------------------------------------- the job


def reclaim(
    paths: Sequence[str | os.PathLike[str]],
    *,
    keep_last: int = 1,
    keep_best: int = 1,
    metric: str | None = None,
    drop: str = "optimizer",
    cancel: threading.Event | None = None,
) -> Iterator[Event]:
    """Slim the checkpoints a fresh `plan_reclaim` chooses, one by one, each atomically."""
    plan = plan_reclaim(paths, keep_last=keep_last, keep_best=keep_best, metric=metric, drop=drop)
    todo = plan.slimmed
    total = sum(map(_written, todo))
    yield Event(
        "start",
        JOB,
        0,
        total,
        f"reclaiming {human_bytes(plan.total_freed)} from {len(todo)} checkpoints",
        {"plan": plan.to_dict()},
    )
    for line in plan.lines()[:-1]:
        yield Event("log", JOB, 0, total, line, {"plan_line": True})
    for item in plan.items:  # what an interrupted reclaim left: removed before anything else
        if item.action != "refuse":
            for event in _clean(item):
                yield dataclasses.replace(event, bytes_total=total)
    done = 0
    failed: list[str] = []
    freed = 0
    for item in todo:
        check_cancel(cancel)
        before = _free_bytes(Path(item.path).parent)
        try:
            for event in _slim(item, cancel):
                if event.kind == "progress":
                    yield Event("progress", JOB, done + event.bytes_done, total, event.message)
                elif event.kind in ("log", "done"):
                    yield Event("log", JOB, done, total, f"{Path(item.path).name}: {event.message}")
        except JobError as exc:
            if cancel is not None and cancel.is_set():
                raise
            failed.append(f"{Path(item.path).name}: {exc}")
            yield Event("log", JOB, done, total, f"failed, left as it was: {exc}")
        else:
            freed += max(_free_bytes(Path(item.path).parent) - before, 0)
        done += _written(item)
    if failed:
        raise JobError(f"{len(failed)} of {len(todo)} checkpoints not slimmed: {failed[0]}")
    yield Event(
        "done",
        JOB,
        total,
        total,
        f"slimmed {len(todo)} checkpoints; {human_bytes(plan.total_freed)} freed",
        {
            "slimmed": [i.path for i in todo],
            "freed": plan.total_freed,
            "disk_freed": freed,
            "plan": plan.to_dict(),
        },
    )


def _free_bytes(folder: Path) -> int:
    try:
        st = os.statvfs(folder)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def _clean(item: PlanItem) -> Iterator[Event]:
    """Remove the abandoned temporary outputs and stale lock of a checkpoint (checked again)."""
    for left in item.leftovers:
        found = leftover(Path(left))
        if found is not None:
            try:
                remove_leftover(found)
            except OSError as exc:
                yield Event("log", JOB, message=f"left {Path(left).name}: {exc}")
                continue
            what = "temporary output" if found.kind == "temp" else "lock file"
            yield Event(
                "log", JOB, message=f"removed {Path(left).name}, an interrupted job's {what}"
            )


def _written(item: PlanItem) -> int:
    """Bytes a slimming writes (the progress total): a rewritten file, or a folder's new files."""
    return item.new_bytes if Path(item.path).is_dir() else item.after


def _slim(item: PlanItem, cancel: threading.Event | None) -> Iterator[Event]:
    if Path(item.path).is_dir():
        yield from _slim_folder(item, cancel)
    else:
        yield from _slim_file(item, cancel)


def _slim_file(item: PlanItem, cancel: threading.Event | None) -> Iterator[Event]:
    from ckpttui.jobs.export import plan_export, write_torch
    from ckpttui.jobs.slim import slim_layout
    from ckpttui.jobs.weights import open_weights

    path = Path(item.path)
    ws = open_weights(path)
    try:
        plan, notes = plan_export(ws)
        slim = slim_layout(ws, keep=tuple(item.keep_keys or ()))
        yield from write_torch(
            JOB,
            [*plan, *slim.tensors],
            path,
            slim.wrap,
            inputs=(),
            force=True,
            cancel=cancel,
            notes=[*notes, *slim.notes],
            sources=ws.sources,
        )
    finally:
        ws.close()


def _slim_folder(item: PlanItem, cancel: threading.Event | None) -> Iterator[Event]:
    from ckpttui.jobs.atomic import AtomicOutput

    path = Path(item.path)
    removes = {os.path.abspath(f) for f in item.removes}
    layout = layout_named(item.layout)
    sidecar = layout.contract.sidecar
    atomic = AtomicOutput(path, force=True, folder=True, estimate=item.new_bytes)
    with atomic as temp:
        for src in sorted(path.rglob("*")):
            check_cancel(cancel)
            dest = temp / src.relative_to(path)
            if src.is_symlink():
                os.symlink(os.readlink(src), dest)
            elif src.is_dir():
                dest.mkdir()
            elif src.name == sidecar and src.parent == path:
                # the framework's metadata file says what the folder holds, so that it is never
                # taken for an interrupted save (see LoaderContract.sidecar)
                shutil.copy2(src, dest)
                with open(dest, "a", encoding="utf-8") as f:
                    f.write(f"\n{WRITTEN_BY} (reclaim: {', '.join(_names(removes))} left out)\n")
            elif os.path.abspath(src) not in removes:
                try:
                    os.link(src, dest)
                except OSError:
                    shutil.copy2(src, dest)
        if layout.consolidated:
            yield from _consolidate(path, temp / layout.consolidated, cancel)
    yield Event("done", JOB, message=f"removed {', '.join(_names(removes))}")


def _consolidate(folder: Path, out: Path, cancel: threading.Event | None) -> Iterator[Event]:
    """Write a ZeRO folder's consolidated fp32 weights (`jobs.zero`) as a torch file, read back."""
    from ckpttui.jobs.events import ProgressClock
    from ckpttui.jobs.output import releaser, stream_plan, verify_output
    from ckpttui.jobs.pt_writer import TorchZipWriter
    from ckpttui.jobs.st_writer import TensorSpec
    from ckpttui.jobs.zero import open_zero, plan_zero

    ckpt = open_zero(folder)
    try:
        plan = plan_zero(ckpt)
        total = sum(p.nbytes for p in plan if p.alias_of is None)
        specs = [TensorSpec(p.name, p.dtype, p.shape) for p in plan]
        aliases = {p.name: p.alias_of for p in plan if p.alias_of is not None}
        clock = ProgressClock(JOB, total)
        with open(out, "wb") as f:
            writer = TorchZipWriter(f, specs, aliases, out.stem)
            try:
                yield from stream_plan(
                    plan,
                    writer.write,
                    clock,
                    cancel,
                    releaser([*ckpt.model, *ckpt.optim]),
                    skip_aliases=True,
                )
                writer.finish()
            except BaseException:
                writer.abort()
                raise
        last = clock.flush()
        if last is not None:
            yield last
        done = verify_output(JOB, folder / out.name, "torch", plan, [out], {}, total)
        yield Event("log", JOB, total, total, f"{out.name}: {done.message}")
    finally:
        ckpt.close()


def _names(paths: set[str]) -> list[str]:
    return [Path(f).name for f in sorted(paths)]
