"""Reclaim: slim the checkpoints of a run in place (optimizer state dropped), keeping some whole.

`plan_reclaim` (`jobs.reclaim_plan`) decides, from names, headers and pickles only (no torch):
each checkpoint is kept (the newest `keep_last`, the best `keep_best` by the framework's metric,
a symlink's target, already slim), refused (incomplete, being written by a running job, modified
in the last few seconds, unsafe to read), or slimmed, with the bytes it holds, will hold and will
free.
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
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from ckpttui.jobs.events import Event, JobError, check_cancel
from ckpttui.jobs.owner import leftover, remove_leftover
from ckpttui.jobs.reclaim_plan import DROPS, RECENT, PlanItem, ReclaimPlan, plan_reclaim
from ckpttui.layouts import layout_named
from ckpttui.layouts.base import WRITTEN_BY
from ckpttui.units import human_bytes

__all__ = ["DROPS", "RECENT", "PlanItem", "ReclaimPlan", "plan_reclaim", "reclaim"]

JOB = "reclaim"


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
    from ckpttui.jobs.output import releaser, verify_output, write_torch_file
    from ckpttui.jobs.zero import open_zero, plan_zero

    ckpt = open_zero(folder)
    try:
        plan = plan_zero(ckpt)
        total = sum(p.nbytes for p in plan if p.alias_of is None)
        clock = ProgressClock(JOB, total)
        release = releaser([*ckpt.model, *ckpt.optim])
        shown = folder / out.name
        digest = yield from write_torch_file(out, shown, out.stem, plan, clock, cancel, release)
        last = clock.flush()
        if last is not None:
            yield last
        done = verify_output(JOB, shown, "torch", plan, [out], {out.name: digest}, total)
        yield Event("log", JOB, total, total, f"{out.name}: {done.message}")
    finally:
        ckpt.close()


def _names(paths: set[str]) -> list[str]:
    return [Path(f).name for f in sorted(paths)]
