"""verify: read every tensor's bytes once and say whether each checkpoint is healthy.

For each checkpoint under a path (a file, a checkpoint folder, or a folder of many), every file
ckpttui reads is mapped and read once, in place, by one thread per CPU (up to `THREADS`) taking
tasks of about 4 MiB in order of file offset (`_stream`):

* torch zip: every record's CRC-32 against the archive's central directory (``torch.save`` may
  write 0 when told not to compute it: then the record is noted as unchecked, not failed), and
  each record's bounds against the file; a file cut short (no central directory) is walked by its
  local headers to name the record, and so the tensor, that is cut;
* safetensors: tensors must tile the byte buffer (no overlap, no hole, nothing after the last);
* legacy torch: storage bounds (the reader checks every element count against the pickle);
* every tensor whose dtype is plain numbers: NaN and Inf counts, all-zero floating weights, and
  min/max/mean/std/norm kept for the app (`ckpttui.jobs.tensorstats`).

The verdict of a checkpoint is ``healthy`` and a list of ``problems``, each naming the file and,
where there is one, the tensor. numpy and an optional C module only: no torch import, so it
starts fast.

Speed (benchmarks/RESULTS.md, "verify"): per 256 KiB of a record, one pass from memory (the
CRC-32, ISA-L) and one in cache for the statistics (the C module `_moments`: min, max, NaN/Inf,
sum and sum of squares at once; without it four numpy passes), all releasing the GIL, so threads
add up where CPUs are free. Bytes without a CRC go through the one pass a MiB at a time.
"""

from __future__ import annotations

import bisect
import itertools
import mmap
import os
import re
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckpttui.formats import read_file
from ckpttui.formats.unpickler import (
    ELEMENT_SIZE,
)
from ckpttui.inventory import Inventory, scan
from ckpttui.jobs.events import Event, JobError, ProgressClock, check_cancel
from ckpttui.jobs.tensorstats import Stats, Summary, readable
from ckpttui.jobs.zipcut import LOCAL, LOCAL_MAGIC, find_cut
from ckpttui.records import Category, Checkpoint, FileIndex, TensorRecord

CHUNK = 256 << 10  # bytes read at a time: stays in L2 for the several passes over it
# Bytes read at a time where one pass does it all (no CRC-32, statistics by the C module): fewer
# calls from Python (safetensors bf16/fp16: 80-87% of cat's speed, 75-80% at CHUNK).
WIDE = 1 << 20
PIECE = 4 << 20  # bytes a thread takes at a time (a multiple of CHUNK)
WINDOW = 4  # tasks a thread may run ahead of the first unfinished one
RELEASE = 16 << 20  # pages read are given back this often
# Threads reading at once: CRC-32 (ISA-L), numpy's reductions and BLAS all release the GIL. On
# 2 CPUs one thread was faster, quiet and loaded (bench_verify_diff: 61% vs 49% of cat quiet,
# 67% vs 58% loaded): the second thread only competes with the page copies. From 3 CPUs up (not
# measured here) one thread per CPU, at most 4.
_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
THREADS = 1 if _CPUS <= 2 else min(4, _CPUS)


def _crc32_functions() -> tuple[Callable[[Any, int], int], Callable[[int, int, int], int] | None]:
    """ISA-L's CRC-32 where installed (about 3x zlib 1.2's here; benchmarks/RESULTS.md), and
    its ``crc32_combine`` (CRC of A+B from those of A and B), which lets threads share a record."""
    try:
        from isal.isal_zlib import crc32 as fast
        from isal.isal_zlib import crc32_combine as combine
    except ImportError:
        return zlib.crc32, None
    return fast, combine


crc32, crc32_combine = _crc32_functions()


@dataclass
class Problem:
    """One thing wrong with a checkpoint, naming the file and, where there is one, the tensor."""

    file: str
    """The file, relative to the path verified."""
    tensor: str | None
    """The tensor (key path joined by '/'), or None for a file-level problem."""
    kind: str
    """``crc``, ``truncated``, ``bounds``, ``unreadable``, ``nan``, ``inf``, ``zero``, ``incomplete``."""
    message: str
    """One line."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data."""
        return {
            "file": self.file,
            "tensor": self.tensor,
            "kind": self.kind,
            "message": self.message,
        }

    def line(self) -> str:
        """``file: tensor 'x': message``."""
        where = f"{self.file}: tensor {self.tensor!r}" if self.tensor else self.file
        return f"{where}: {self.message}"


@dataclass
class _Range:
    """A contiguous byte range of one tensor (or of several records viewing the same bytes)."""

    start: int
    end: int
    stats: Stats | None
    records: list[TensorRecord]


@dataclass
class _Region:
    """A run of bytes read in one go: a zip record, a legacy storage, a safetensors tensor."""

    name: str
    start: int
    length: int
    crc: int | None
    ranges: list[_Range] = field(default_factory=list)
    strided: list[TensorRecord] = field(default_factory=list)
    segments: list[_Segment] = field(default_factory=list)
    """How it is read (`_tasks`), in order."""


@dataclass
class _FilePlan:
    path: Path
    rel: str
    index: FileIndex
    categories: dict[str, Category]
    parts: dict[str, str] = field(default_factory=dict)
    regions: list[_Region] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stats: dict[str, Stats | None] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(r.length for r in self.regions)


def verify(
    path: str | os.PathLike[str], *, cancel: threading.Event | None = None
) -> Iterator[Event]:
    """Verify every checkpoint under `path`; the ``done`` event carries the report (`report`)."""
    t0 = time.monotonic()
    p = Path(path)
    if not p.exists():
        raise JobError(f"{p}: no such file or folder")
    try:
        inv = scan(p)
    except OSError as exc:
        raise JobError(str(exc)) from None
    groups = _groups(inv, p)
    if not groups:
        raise JobError(f"{p}: no checkpoint found")
    plans = [(ckpt, [_plan(inv, p, Path(f)) for f in files]) for ckpt, files in groups]
    total = sum(fp.nbytes for _, fps in plans for fp in fps)
    yield Event(
        "start",
        "verify",
        0,
        total,
        f"verify {p.name or p}: {len(plans)} checkpoint(s)",
        {"path": str(p), "checkpoints": len(plans)},
    )
    clock = ProgressClock("verify", total)
    done = 0
    results = []
    for ckpt, fps in plans:
        for fp in fps:
            for now in _stream(fp, done, cancel):
                done = now
                event = clock.tick(done, fp.rel)
                if event is not None:
                    yield event
        result = _verdict(inv, p, ckpt, fps)
        results.append(result)
        state = "healthy" if result["healthy"] else f"{len(result['problems'])} problem(s)"
        yield Event("log", "verify", done, total, f"{result['path'] or p.name}: {state}")
    event = clock.flush()
    if event is not None:
        yield event
    report = {
        "path": str(p),
        "healthy": all(r["healthy"] for r in results),
        "bytes_read": done,
        "seconds": round(time.monotonic() - t0, 3),
        "checkpoints": results,
    }
    bad = sum(not r["healthy"] for r in results)
    yield Event(
        "done",
        "verify",
        done,
        total,
        f"verified {len(results)} checkpoint(s), {done} bytes: "
        + ("all healthy" if not bad else f"{bad} with problems"),
        report,
    )


# ---------------------------------------------------------------------- what to read


def _groups(inv: Inventory, p: Path) -> list[tuple[Checkpoint, list[str]]]:
    out = [(c, [f for f in c.files if f in inv.files]) for c in inv.checkpoints]
    if not out and p.is_file():
        key = os.path.abspath(p)
        inv.files[key] = read_file(p)
        out = [(Checkpoint(key, "torch", files=[key]), [key])]
    return out


def _rel(root: Path, path: Path) -> str:
    if root.is_file():
        return path.name
    try:
        rel = os.path.relpath(path, root).replace(os.sep, "/")
    except ValueError:
        return str(path)
    return "" if rel == "." else rel


def _plan(inv: Inventory, root: Path, path: Path) -> _FilePlan:
    key = os.path.abspath(path)
    index = inv.files.get(key) or read_file(path)
    classified = inv.records.get(key, [])
    cats = {r.name: r.category for r in classified}
    fp = _FilePlan(path, _rel(root, path), index, cats, {r.name: r.part for r in classified})
    if index.error:
        fp.problems.extend(_unreadable(fp))
        return fp
    try:
        if index.format == "torch-zip":
            _plan_zip(fp)
        elif index.format == "torch-legacy":
            offsets = index.metadata.get("storage_offsets", {})
            for key_, nbytes in index.storages.items():
                if key_ in offsets:
                    fp.regions.append(_Region(f"storage {key_}", offsets[key_], nbytes, None))
            _attach(fp, {r.name[len("storage ") :]: r for r in fp.regions})
        elif index.format == "safetensors":
            _plan_safetensors(fp)
    except OSError as exc:
        fp.regions.clear()
        fp.problems.append(Problem(fp.rel, None, "unreadable", exc.strerror or str(exc)))
    fp.regions.sort(key=lambda r: r.start)
    return fp


def _unreadable(fp: _FilePlan) -> list[Problem]:
    error = fp.index.error or ""
    damaged = "truncated" in error or "damaged" in error or "past the end" in error
    cut = find_cut(fp.path, fp.index.size) if fp.index.format == "torch-zip" and damaged else None
    if cut is not None and cut.record is not None:
        more = len(cut.tensors) - 1
        tensor = None
        if cut.tensors:
            tensor = cut.tensors[0] + (f" (+{more} sharing its storage)" if more > 0 else "")
        return [
            Problem(
                fp.rel,
                tensor,
                "truncated",
                f"record {cut.record} is cut short: the file ends at byte {fp.index.size}, "
                "inside it",
            )
        ]
    if cut is not None:
        return [
            Problem(
                fp.rel,
                None,
                "truncated",
                f"file cut short after record {cut.last} (byte {fp.index.size}): the zip's "
                "central directory is missing",
            )
        ]
    kind = "truncated" if ("truncated" in error or "past the end" in error) else "unreadable"
    named = re.search(r"tensor (['\"])(.*?)\1", error)
    return [Problem(fp.rel, named.group(2) if named else None, kind, error)]


def _plan_zip(fp: _FilePlan) -> None:
    root = fp.index.metadata.get("root", "")
    prefix = f"{root}/data/"
    size = fp.index.size
    with open(fp.path, "rb") as f:
        try:
            infos = zipfile.ZipFile(f).infolist()
        except zipfile.BadZipFile as exc:
            fp.problems.append(Problem(fp.rel, None, "unreadable", f"damaged zip ({exc})"))
            return
        by_key: dict[str, _Region] = {}
        for info in infos:
            inside = 0 <= info.header_offset <= size - LOCAL.size
            head = os.pread(f.fileno(), LOCAL.size, info.header_offset) if inside else b""
            if len(head) < LOCAL.size or LOCAL.unpack(head)[0] != LOCAL_MAGIC:
                fp.problems.append(
                    Problem(
                        fp.rel,
                        None,
                        "bounds",
                        f"record {info.filename}: no local header at byte {info.header_offset}",
                    )
                )
                continue
            fields = LOCAL.unpack(head)
            start = info.header_offset + LOCAL.size + fields[9] + fields[10]
            if start + info.compress_size > size:
                fp.problems.append(
                    Problem(
                        fp.rel,
                        None,
                        "truncated",
                        f"record {info.filename} ends at byte {start + info.compress_size}, "
                        f"past the end of the file ({size} bytes)",
                    )
                )
                continue
            crc: int | None = info.CRC
            if info.CRC == 0 and info.file_size:
                fp.notes.append(f"{info.filename}: no CRC-32 recorded (saved without it)")
                crc = None
            if info.compress_type != zipfile.ZIP_STORED:
                crc = None  # the CRC is of the uncompressed bytes; torch.save never compresses
                fp.notes.append(f"{info.filename}: compressed, CRC not checked")
            region = _Region(f"record {info.filename}", start, info.compress_size, crc)
            fp.regions.append(region)
            if info.filename.startswith(prefix) and info.compress_type == zipfile.ZIP_STORED:
                by_key[info.filename[len(prefix) :]] = region
    _attach(fp, by_key)


def _attach(fp: _FilePlan, regions: dict[str, _Region]) -> None:
    """Give each region the tensors that view it; identical views share one `Stats`."""
    big = fp.index.metadata.get("byteorder", "little") == "big"
    seen: dict[tuple[Any, ...], _Range] = {}
    for rec in fp.index.tensors:
        region = regions.get(rec.storage or "")
        if region is None or not readable(rec.dtype):
            fp.stats[rec.name] = None
            continue
        elsize = ELEMENT_SIZE[rec.dtype]
        ident = (rec.storage, rec.storage_offset, rec.shape, rec.stride, rec.dtype)
        if ident in seen:
            seen[ident].records.append(rec)
            fp.stats[rec.name] = seen[ident].stats
            continue
        stats = Stats(rec.dtype, big_endian=big)
        fp.stats[rec.name] = stats
        if rec.numel and _contiguous(rec):
            first = region.start + rec.storage_offset * elsize
            rng = _Range(first, first + rec.nbytes, stats, [rec])
            region.ranges.append(rng)
            seen[ident] = rng
        elif rec.numel:
            region.strided.append(rec)
            seen[ident] = _Range(0, 0, stats, [rec])
    for region in regions.values():
        region.ranges.sort(key=lambda r: r.start)


def _contiguous(rec: TensorRecord) -> bool:
    if rec.stride is None:
        return True
    expect = 1
    for d, s in zip(reversed(rec.shape), reversed(rec.stride), strict=True):
        if d != 1 and s != expect:
            return False
        expect *= d
    return True


def _plan_safetensors(fp: _FilePlan) -> None:
    header_end = 8 + int(fp.index.metadata.get("header_bytes", 0))
    at = header_end
    regions: dict[str, _Region] = {}
    for rec in fp.index.tensors:  # sorted by offset by the reader
        start = int(rec.data_offset or 0)
        if start < at:
            fp.problems.append(
                Problem(
                    fp.rel,
                    rec.name,
                    "bounds",
                    f"starts at byte {start}, inside the tensor before it",
                )
            )
        elif start > at:
            fp.problems.append(
                Problem(
                    fp.rel, rec.name, "bounds", f"{start - at} unused bytes before it (byte {at})"
                )
            )
        at = max(at, start + rec.nbytes)
        regions[rec.name] = _Region(f"tensor {rec.name}", start, rec.nbytes, None)
        fp.regions.append(regions[rec.name])
    if at < fp.index.size:
        fp.problems.append(
            Problem(
                fp.rel,
                None,
                "bounds",
                f"{fp.index.size - at} bytes after the last tensor (byte {at}): not a safetensors file "
                "as written",
            )
        )
    _attach(fp, regions)


# ---------------------------------------------------------------------- reading


def _stream(fp: _FilePlan, done: int, cancel: threading.Event | None) -> Iterator[int]:
    """Read each region once: CRC and statistics, in `THREADS` threads; yields bytes done so far.

    The file is mapped read-only and read in place (no copy into a buffer, as cat must make).
    Regions are cut into segments, grouped into tasks of about `PIECE` bytes in file order;
    each thread takes the next task, and a segment's CRC-32 is combined into its record's after
    all are read. The pages of the tasks done are given back every `RELEASE` bytes, so resident
    memory stays flat.
    """
    if not fp.regions:
        return
    with open(fp.path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size != fp.index.size:
            fp.problems.append(
                Problem(fp.rel, None, "truncated", f"changed size while being read ({size} bytes)")
            )
            return
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            if hasattr(mapped, "madvise"):
                mapped.madvise(mmap.MADV_SEQUENTIAL)
            yield from _stream_mapped(fp, mapped, done, cancel)
            _check_crcs(fp)
            for region in fp.regions:
                for rec in region.strided:
                    _feed_strided(f.fileno(), region, rec, fp.stats.get(rec.name))
        finally:
            try:
                mapped.close()
            except BufferError:
                pass  # a view is still alive (an exception on its way out): unmapped when it goes


@dataclass
class _Segment:
    """Bytes [start, stop) of one region, read by one thread: its CRC-32 (from 0) and stats."""

    region: _Region
    start: int
    stop: int
    active: list[_Range]
    """The region's ranges that begin before `start` and end after it."""
    first: int
    """Index of the first range of the region that begins at or after `start`."""
    crc: int = 0


def _tasks(fp: _FilePlan) -> list[list[_Segment]]:
    """Every region's bytes as segments, grouped into tasks of about `PIECE` bytes, in file order.

    Segments start at multiples of `CHUNK` into their region (whole elements of every tensor);
    a record is only cut where its CRC-32 parts can be combined. Bytes with nothing to check (no
    CRC, no tensor: a compressed record) are not read.
    """
    tasks: list[list[_Segment]] = [[]]
    filled = 0
    for region in fp.regions:
        if region.crc is None and not region.ranges:
            continue
        starts = [r.start for r in region.ranges]
        end = region.start + region.length
        step = PIECE if region.crc is None or crc32_combine is not None else region.length
        pos = region.start
        while True:
            stop = min(pos + step, end)
            first = bisect.bisect_left(starts, pos)
            active = [r for r in region.ranges[:first] if r.end > pos]
            seg = _Segment(region, pos, stop, active, first)
            region.segments.append(seg)
            tasks[-1].append(seg)
            filled += stop - pos
            if filled >= PIECE:
                tasks.append([])
                filled = 0
            if stop >= end:
                break
            pos = stop
    return [t for t in tasks if t]


def _read_segment(view: memoryview, seg: _Segment) -> None:
    """CRC-32 and statistics of one segment, a `CHUNK` at a time (each stays in cache), or a
    `WIDE` one where a single pass reads it."""
    region = seg.region
    check = region.crc is not None
    ranges = region.ranges
    one_pass = not check and all(r.stats is None or r.stats.fused for r in ranges)
    step = WIDE if one_pass else CHUNK
    i = seg.first
    active = list(seg.active)
    crc = 0
    pos = seg.start
    while pos < seg.stop:
        stop = min(pos + step, seg.stop)
        chunk = view[pos:stop]
        if check:
            crc = crc32(chunk, crc)
        while i < len(ranges) and ranges[i].start < stop:
            active.append(ranges[i])
            i += 1
        for rng in active:
            lo = max(rng.start, pos)
            hi = min(rng.end, stop)
            if hi > lo and rng.stats is not None:
                rng.stats.feed(chunk[lo - pos : hi - pos])
        active = [r for r in active if r.end > stop]
        chunk.release()
        pos = stop
    seg.crc = crc


class _Work:
    """Tasks taken in order by any number of threads; who finished what; pages given back.

    A thread never runs more than `WINDOW` tasks ahead of the first unfinished one, and whoever
    finishes a task gives back the pages of the tasks done in order (every `RELEASE` bytes), so
    resident memory stays flat however the threads are scheduled.
    """

    def __init__(self, tasks: list[list[_Segment]], view: memoryview, mapped: mmap.mmap) -> None:
        self.tasks = tasks
        self.view = view
        self.mapped = mapped
        self.finished = [False] * len(tasks)
        self.ahead = 0
        """Tasks finished in order."""
        self.done = 0
        """Their bytes."""
        self.released = 0
        self.stop = False
        self.error: BaseException | None = None
        self.changed = threading.Condition()
        self._next = itertools.count()  # next() is atomic under the GIL

    def take(self) -> int | None:
        """The next task, once it is within `WINDOW` of the first unfinished one."""
        i = next(self._next)
        if i >= len(self.tasks):
            return None
        with self.changed:
            self.changed.wait_for(lambda: self.stop or i < self.ahead + WINDOW)
        return None if self.stop else i

    def run(self, i: int) -> None:
        for seg in self.tasks[i]:
            _read_segment(self.view, seg)
        with self.changed:
            self.finished[i] = True
            while self.ahead < len(self.tasks) and self.finished[self.ahead]:
                self.done += sum(s.stop - s.start for s in self.tasks[self.ahead])
                self.ahead += 1
            self._release()
            self.changed.notify_all()

    def _release(self) -> None:
        upto = self.tasks[self.ahead][0].start if self.ahead < len(self.tasks) else len(self.mapped)
        if upto - self.released >= RELEASE and hasattr(self.mapped, "madvise"):
            lo = self.released - self.released % mmap.PAGESIZE
            self.mapped.madvise(mmap.MADV_DONTNEED, lo, upto - upto % mmap.PAGESIZE - lo)
            self.released = upto

    def wait(self, timeout: float) -> None:
        """Until the first unfinished task is finished, a thread failed, or `timeout` passed."""
        with self.changed:
            i = self.ahead
            self.changed.wait_for(lambda: self.error is not None or self.ahead > i, timeout)

    def halt(self) -> None:
        with self.changed:
            self.stop = True
            self.changed.notify_all()

    def worker(self) -> None:
        try:
            while (i := self.take()) is not None:
                self.run(i)
        except BaseException as exc:  # handed to the main thread, which raises it
            with self.changed:
                self.error = exc
                self.stop = True
                self.changed.notify_all()


def _stream_mapped(
    fp: _FilePlan, mapped: mmap.mmap, done: int, cancel: threading.Event | None
) -> Iterator[int]:
    tasks = _tasks(fp)
    skipped = fp.nbytes - sum(s.stop - s.start for t in tasks for s in t)
    check_cancel(cancel)  # before any thread starts: a small file may be read before the loop
    with memoryview(mapped) as view:
        work = _Work(tasks, view, mapped)
        threads = [
            threading.Thread(target=work.worker, name="verify", daemon=True)
            for _ in range(min(THREADS, len(tasks)) - 1)
        ]
        for thread in threads:
            thread.start()
        try:
            told = 0
            while work.ahead < len(tasks):
                check_cancel(cancel)
                i = work.take()
                if i is not None:
                    work.run(i)
                else:  # the last tasks are with the other threads
                    work.wait(0.1)
                if work.error is not None:
                    raise work.error
                if work.done > told:
                    told = work.done
                    yield done + told
            # The other threads may have read every task before this one looked.
            if work.error is not None:
                raise work.error
            if work.done > told:
                yield done + work.done
        finally:
            work.halt()
            for thread in threads:
                thread.join()
    if skipped:
        yield done + work.done + skipped


def _check_crcs(fp: _FilePlan) -> None:
    """Each record's CRC-32, combined from its segments', against the archive's."""
    for region in fp.regions:
        if region.crc is None or not region.segments:
            continue
        crc = region.segments[0].crc
        for seg in region.segments[1:]:
            assert crc32_combine is not None  # records are only cut when it is there
            crc = crc32_combine(crc, seg.crc, seg.stop - seg.start)
        if crc != region.crc:
            fp.problems.append(
                Problem(
                    fp.rel,
                    _tensor_of(region),
                    "crc",
                    f"{region.name}: CRC-32 {crc:08x} does not match {region.crc:08x} "
                    "in the archive (bytes changed since it was written)",
                )
            )


def _tensor_of(region: _Region) -> str | None:
    names = [r.name for rng in region.ranges for r in rng.records] + [
        r.name for r in region.strided
    ]
    if not names:
        return None
    return names[0] if len(names) == 1 else f"{names[0]} (+{len(names) - 1} sharing its storage)"


def _feed_strided(fd: int, region: _Region, rec: TensorRecord, stats: Stats | None) -> None:
    import numpy as np

    if stats is None or rec.stride is None:
        return
    elsize = ELEMENT_SIZE[rec.dtype]
    raw = os.pread(fd, region.length, region.start)
    flat = np.frombuffer(raw, dtype=np.uint8)[: region.length - region.length % elsize]
    items = flat.view(f"V{elsize}")
    view = np.lib.stride_tricks.as_strided(
        items[rec.storage_offset :],
        shape=rec.shape,
        strides=tuple(s * elsize for s in rec.stride),
        writeable=False,
    )
    stats.feed(np.ascontiguousarray(view).tobytes())


# ---------------------------------------------------------------------- verdicts


def _verdict(inv: Inventory, root: Path, ckpt: Checkpoint, fps: list[_FilePlan]) -> dict[str, Any]:
    problems: list[Problem] = []
    warnings: list[str] = []
    files = []
    broken = {fp.rel for fp in fps if fp.index.error}
    for text in ckpt.problems:
        if not any(text.startswith(b + ":") or text.startswith(Path(b).name + ":") for b in broken):
            problems.append(Problem(_rel(root, Path(ckpt.path)), None, "incomplete", text))
    for fp in fps:
        problems.extend(fp.problems)
        warnings.extend(f"{fp.rel}: {n}" for n in fp.notes)
        tensors = []
        for rec in fp.index.tensors:
            stats = fp.stats.get(rec.name)
            summary = stats.summary() if stats is not None else None
            category = fp.categories.get(rec.name, Category.OTHER)
            if summary is not None:
                found = _judge(fp.rel, rec, category, fp.parts.get(rec.name, ""), summary)
                for item in found:
                    if isinstance(item, Problem):
                        problems.append(item)
                    else:
                        warnings.append(item)
            tensors.append(
                {
                    "name": rec.name,
                    "dtype": rec.dtype,
                    "shape": list(rec.shape),
                    "category": category.value,
                    "stats": summary.to_dict() if summary is not None else None,
                }
            )
        files.append(
            {
                "path": fp.rel,
                "format": fp.index.format,
                "size": fp.index.size,
                "records_crc_checked": sum(r.crc is not None for r in fp.regions),
                "tensors": tensors,
            }
        )
    return {
        "path": _rel(root, Path(ckpt.path)),
        "layout": ckpt.layout,
        "healthy": not problems,
        "problems": [p.to_dict() for p in problems],
        "warnings": warnings,
        "files": files,
    }


_FLOATS = ("float64", "float32", "float16", "bfloat16")
# Per-rank fragments of frozen parameters: flat, padded like the master partitions.
_FRAGMENTS = ("frozen_param_fragments",)


def _judge(
    rel: str, rec: TensorRecord, category: Category, part: str, s: Summary
) -> list[Problem | str]:
    """Problems (the checkpoint is not healthy) and notes (worth a look) from one tensor's values.

    NaN/Inf in weights or optimizer state is a problem; in other state (a ``best score`` of
    ``inf`` kept by a callback) a note, and in a flat partition (an fp32 master, part ``master``,
    or a frozen parameter's rank fragment) a note too: such partitions are padded for alignment
    with memory never written (ZeRO's, seen with one NaN in 102 values, and one in the 39 values of
    the last rank's fragment of a frozen matrix), so only the consolidated weights can tell. An all-zero weight
    matrix (``*.weight``, 2-D or more) is a problem; other all-zero weights (biases,
    zero-initialised parameters) are notes.
    """
    out: list[Problem | str] = []
    if s.nan or s.inf:
        parts = ([f"{s.nan} NaN"] if s.nan else []) + ([f"{s.inf} Inf"] if s.inf else [])
        text = f"{' and '.join(parts)} of {s.count} values ({category.value})"
        if category is Category.OTHER:
            out.append(f"{rel}: {rec.name}: {text}")
        elif len(rec.shape) == 1 and (part == "master" or rec.path[:1] == _FRAGMENTS):
            out.append(
                f"{rel}: {rec.name}: {text} in a flat partition, whose alignment padding "
                "is never written: merge it and verify the result to know"
            )
        else:
            out.append(Problem(rel, rec.name, "nan" if s.nan else "inf", text))
    if s.zero and category is Category.WEIGHTS and rec.dtype in _FLOATS:
        if len(rec.shape) >= 2 and rec.path[-1].split(".")[-1] == "weight":
            out.append(Problem(rel, rec.name, "zero", f"all {s.count} values are zero"))
        else:
            out.append(f"{rel}: {rec.name}: all zero (as zero-initialised parameters are)")
    return out
