"""Scan a folder into checkpoint summaries: one walk, units read in worker processes, in order.

`FolderScan` walks once (`inventory.plan`: stats, no file read), then reads each unit (a
checkpoint folder, a loose file) with `inventory.scan_unit` in up to `jobs` worker processes and
yields their `CheckpointSummary` values in walk order, so ``inspect`` and the app's folder view
show them as they come. Units whose files did not change since the last scan of the same root come
from the scan cache (`scancache`). Nothing here keeps tensor records: a worker sums each unit's
records and sends back only the summaries.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

from ckpttui.inventory import Plan, Unit, plan, scan_unit
from ckpttui.scancache import Row, ScanCache, signature
from ckpttui.summary import (
    CheckpointSummary,
    FileSummary,
    Rel,
    count_elsewhere,
    from_light,
    summarize,
    to_light,
)

MAX_JOBS = 16
"""Default worker count is the usable cores, capped here (header reading is I/O-bound beyond)."""
ENTRY_SEP = ",\n  "
"""Between two entries of a list of the ``inspect --json`` document."""
MIN_UNITS_PER_JOB = 100
"""A default scan uses one worker per this many units to read (at least 2 workers, or it stays in
this process): starting the pool costs ~0.5 s, a small checkpoint ~5 ms to read."""


def default_jobs() -> int:
    """The cores this process may use, capped at `MAX_JOBS`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(MAX_JOBS, cores))


@dataclass
class UnitResult:
    """What one unit held: its checkpoints in walk order, and the files that could not be read."""

    unit: Unit
    checkpoints: list[CheckpointSummary] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    """(absolute path, one line)."""
    cached: bool = False
    """Came from the scan cache."""
    entries: tuple[str, str] | None = None
    """With ``results(text=True)``: the unit's ``checkpoints`` and ``files`` entries of the
    ``inspect --json`` document (joined with `ENTRY_SEP`); `checkpoints` may then be empty."""


def read_unit(root: str, unit: Unit) -> tuple[list[CheckpointSummary], list[tuple[str, str]]]:
    """Read one unit (in a worker process): its summaries and errors, no tensor records."""
    try:
        inv = scan_unit(root, unit)
    except Exception as exc:  # one line on this unit; the scan goes on
        text = " ".join(str(exc).split())[:120]
        return [], [(unit.path, f"cannot be read ({type(exc).__name__}: {text})")]
    return summarize(inv), inv.errors


def _read_unit_args(
    args: tuple[str, Unit],
) -> tuple[list[CheckpointSummary], list[tuple[str, str]]]:
    return read_unit(*args)


def _payload(checkpoints: list[CheckpointSummary], errors: list[tuple[str, str]]) -> dict[str, Any]:
    def same(p: str) -> str:
        return p

    return {
        "checkpoints": [
            dict(s.to_dict(same), files_read=[f.to_dict(same) for f in s.files_read])
            for s in checkpoints
        ],
        "errors": [list(e) for e in errors],
    }


def _from_payload(
    payload: dict[str, Any],
) -> tuple[list[CheckpointSummary], list[tuple[str, str]]]:
    out = []
    for d in payload["checkpoints"]:
        files = {f["path"]: FileSummary.from_dict(f, "") for f in d.get("files_read") or []}
        out.append(CheckpointSummary.from_dict(d, "", files))
    return out, [(p, e) for p, e in payload["errors"]]


def _base(unit: str) -> str:
    """The folder a unit's light rows have their paths relative to (`summary.to_light`)."""
    return os.path.join(os.path.dirname(unit), "")


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a batch of cached rows becomes summaries: they make
    many containers that all live on, and the collections they set off (over an ever bigger
    heap) took half of a cached folder view's time. No generator yields inside."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _entries(checkpoints: list[CheckpointSummary], rel: Rel) -> tuple[str, str] | None:
    """A unit's ``inspect --json`` text (`Row.entries`), None when some of its files are counted
    elsewhere (that depends on the rest of the walk, not on the unit's files)."""
    if any(s.counted_elsewhere for s in checkpoints):
        return None
    dumps = json.dumps
    return (
        ENTRY_SEP.join(dumps(s.to_dict(rel)) for s in checkpoints),
        ENTRY_SEP.join(dumps(f.to_dict(rel)) for s in checkpoints for f in s.files_read),
    )


def _from_entries(entries: tuple[str, str], top: str) -> list[CheckpointSummary]:
    """The summaries back from a unit's text (its paths under `top`, none counted elsewhere)."""
    ckpts, files = (json.loads(f"[{text}]") for text in entries)
    by_path = {}
    for d in files:
        f = FileSummary.from_dict(d, top)
        by_path[f.path] = f
    return [CheckpointSummary.from_dict(d, top, by_path) for d in ckpts]


def _under(checkpoints: list[CheckpointSummary], top: str) -> bool:
    """Every path of these summaries is below `top` (so their text gives them back)."""
    prefix = top.rstrip(os.sep) + os.sep
    return all(
        (p == top or p.startswith(prefix)) and ".." not in p
        for s in checkpoints
        for p in (s.path, *s.files)
    )


def _pool(workers: int) -> Any:
    """Worker processes from a fork server that has imported the readers once (fork itself is
    not safe from the app's threads; spawn would import everything in each worker)."""
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" not in methods:
        return multiprocessing.get_context("spawn").Pool(workers)
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["ckpttui.scan"])
    # multiprocessing hands sys.stderr's descriptor to its helper processes; inside the app
    # sys.stderr is Textual's capture, whose fileno() is not a descriptor.
    saved = sys.stderr
    try:
        saved.fileno()
    except (AttributeError, OSError, ValueError):
        sys.stderr = sys.__stderr__
    else:
        if saved.fileno() < 0:
            sys.stderr = sys.__stderr__
    try:
        return ctx.Pool(workers)
    finally:
        sys.stderr = saved


class FolderScan:
    """A scan of a file or folder; iterate `results()` for its units' summaries in walk order.

    Raises OSError (naming the path) when the root cannot be read at all.
    """

    def __init__(
        self, root: str, jobs: int | None = None, use_cache: bool = True, light: bool = False
    ) -> None:
        self.root = root
        self.light = light
        """Light summaries will do (the folder view's): from the cache, without their files' sums,
        parts and dtypes (`summary.LIGHT`), read from a small table."""
        self.jobs = jobs
        self.use_cache = use_cache
        with _gc_paused():  # the walk's stat lines all live on too
            self.plan: Plan = plan(root)
        self.rel = self.plan.inv.rel
        self.walk_errors: list[tuple[str, str]] = list(self.plan.inv.errors)
        """Folders that could not be listed, dangling links, loops (outside any unit)."""
        self.read = 0
        """Units read from disk (the others came from the cache)."""

    def _workers(self, pending: int) -> int:
        if self.jobs is not None:
            return max(1, min(self.jobs, pending))
        jobs = default_jobs()
        return max(1, min(jobs, pending // MIN_UNITS_PER_JOB))

    def results(
        self, cancelled: Callable[[], bool] | None = None, text: bool = False
    ) -> Iterator[UnitResult]:
        """Each unit's summaries, in walk order (same_as applied across the whole walk).

        With `text`, a unit may come as its ``inspect --json`` text (`UnitResult.entries`) and no
        summaries: what `write_json` writes through, with no decoding when it came from the cache.
        """
        units = self.plan.units
        cache = ScanCache(self.root) if self.use_cache else None
        same_as = self.plan.inv.same_as
        top = str(self.plan.inv.root.absolute())
        sigs: list[str] = []
        shared: list[bool] = []
        todo: list[int] = []
        for i, unit in enumerate(units):
            stats = self.plan.unit_stats(i)
            sig = signature(stats) if unit.kind != "temp" else ""
            sigs.append(sig)
            shared.append(bool(same_as) and any(p in same_as for p, _, _, _ in stats))
            if not (cache is not None and sig and cache.known.get(unit.path) == sig):
                todo.append(i)
        fresh_set = set(todo)
        want = "light" if self.light and not text else "entries"
        complete = False
        pool = None
        try:
            workers = self._workers(len(todo))
            fresh: Iterator[tuple[list[CheckpointSummary], list[tuple[str, str]]]]
            if workers > 1:
                pool = _pool(workers)
                chunk = max(1, min(32, len(todo) // (workers * 8)))
                fresh = pool.imap(
                    _read_unit_args, ((self.root, units[i]) for i in todo), chunksize=chunk
                )
            else:
                fresh = (read_unit(self.root, units[i]) for i in todo)
            ahead: dict[int, Row] = {}
            lite: dict[int, list[CheckpointSummary]] = {}
            for i, unit in enumerate(units):
                if cancelled is not None and cancelled():
                    return
                row = None
                if i not in fresh_set and cache is not None:
                    if i not in ahead:
                        # the next few hundred cached units in one query
                        batch = [
                            k for k in range(i, min(i + 400, len(units))) if k not in fresh_set
                        ]
                        with _gc_paused():
                            got = cache.get_many({units[k].path: sigs[k] for k in batch}, want)
                            ahead = {k: got[units[k].path] for k in batch if units[k].path in got}
                            if want == "light":
                                lite = {
                                    k: [from_light(d, _base(units[k].path)) for d in r.light]
                                    for k, r in ahead.items()
                                    if r.light is not None and not shared[k]
                                }
                    row = ahead.pop(i, None)
                if row is not None and i in lite:
                    yield UnitResult(unit, lite.pop(i), row.errors, True)
                    continue
                if row is not None:
                    if not shared[i] and (text or not self.light) and row.entries is not None:
                        if text:
                            yield UnitResult(unit, [], row.errors, True, row.entries)
                            continue
                        if row.payload is None:
                            yield UnitResult(
                                unit, _from_entries(row.entries, top), row.errors, True
                            )
                            continue
                    if want == "light":  # the full row is needed after all
                        row = cache.get_many({unit.path: sigs[i]}).get(unit.path) if cache else None
                checkpoints: list[CheckpointSummary] | None = None
                if row is not None:
                    if row.payload is not None:
                        checkpoints, errors = _from_payload(row.payload)
                    elif row.entries is not None:
                        checkpoints, errors = _from_entries(row.entries, top), row.errors
                cached = checkpoints is not None
                if checkpoints is None:
                    if i in fresh_set:
                        checkpoints, errors = next(fresh)
                    else:  # the cache went away under us: read it here
                        checkpoints, errors = read_unit(self.root, unit)
                    self.read += 1
                for s in checkpoints:
                    count_elsewhere(s, same_as, self.rel)
                entries = _entries(checkpoints, self.rel) if text or not cached else None
                # An incomplete checkpoint's verdict ("still being written by pid N" or
                # "abandoned") changes with no change to its files: it is read every time.
                if (
                    not cached
                    and cache is not None
                    and sigs[i]
                    and all(s.complete for s in checkpoints)
                ):
                    base = _base(unit.path)
                    light = None if entries is None else [to_light(s, base) for s in checkpoints]
                    full = entries is None or not _under(checkpoints, top)
                    payload = _payload(checkpoints, errors) if full else None
                    cache.put(unit.path, sigs[i], errors, light, entries, payload)
                yield UnitResult(unit, checkpoints, errors, cached, entries if text else None)
            complete = True
        finally:
            if pool is not None:
                pool.terminate()
            if cache is not None:
                cache.close([u.path for u in units] if complete else None)


def write_json(
    scan: FolderScan,
    out: IO[str],
    cancelled: Callable[[], bool] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write the ``inspect --json`` document, each checkpoint as soon as its unit is read (the
    ``files`` entries wait in a temporary file, so memory stays flat); `extra` keys go first."""
    rel = scan.rel
    errors = list(scan.walk_errors)
    out.write('{\n "root": ' + json.dumps(str(scan.plan.inv.root)) + ",")
    for key, value in (extra or {}).items():
        out.write(f"\n {json.dumps(key)}: {json.dumps(value)},")
    out.write('\n "checkpoints": [')
    sep = "\n  "
    with tempfile.TemporaryFile("w+", encoding="utf-8") as files:
        fsep = "\n  "
        for result in scan.results(cancelled, text=True):
            errors.extend(result.errors)
            if result.entries is not None:
                ckpts, fentries = result.entries
                if ckpts:
                    out.write(sep + ckpts)
                    sep = ENTRY_SEP
                if fentries:
                    files.write(fsep + fentries)
                    fsep = ENTRY_SEP
                continue
            for s in result.checkpoints:
                out.write(sep + json.dumps(s.to_dict(rel)))
                sep = ENTRY_SEP
                for f in s.files_read:
                    if f.path not in s.counted_elsewhere:
                        files.write(fsep + json.dumps(f.to_dict(rel)))
                        fsep = ENTRY_SEP
        out.write('\n ],\n "files": [')
        files.seek(0)
        shutil.copyfileobj(files, out)
    out.write('\n ],\n "errors": [')
    out.write(",".join("\n  " + json.dumps({"path": rel(p), "error": e}) for p, e in errors))
    out.write("\n ]\n}\n")


def summaries(
    scan: FolderScan,
    errors: list[tuple[str, str]],
    unsafe: set[str],
    cancelled: Callable[[], bool] | None = None,
) -> Iterator[CheckpointSummary]:
    """Every checkpoint summary in walk order, collecting errors and unsafe globals on the way."""
    errors.extend(scan.walk_errors)
    for result in scan.results(cancelled):
        errors.extend(result.errors)
        for s in result.checkpoints:
            for f in s.files_read:
                unsafe.update(f.unsafe_globals)
            yield s
