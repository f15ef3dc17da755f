"""diff: what changed between two checkpoints, tensor by tensor and module by module.

Both checkpoints are opened in place with `open_weights` (any layout ckpttui reads; with
``include_all`` the optimizer and other state of their files too, under their key paths). For
every name in both: ``equal`` (same dtype, shape and bytes), ``max_abs`` = max |B - A| and
``rel_change`` = ||B - A||_2 / ||A||_2, computed in float64 over chunks of a flat view, so memory
stays at a few chunks whatever the tensor's size, and the pages read are given back after each
tensor. Names only in A or only in B, and shape or dtype changes, are listed; the sums roll up per
module (the top-level prefix, past wrappers such as ``module.``). Integer and bool tensors (step
counters such as BatchNorm's ``num_batches_tracked``) are compared and counted, marked
``integer`` in their rows, but kept out of a module's ``max_abs`` and ``rel_change``: a counter
going from 100 to 200 would otherwise outweigh every weight of the module.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckpttui.accounting import module_of
from ckpttui.formats import read_file
from ckpttui.jobs.events import Event, ProgressClock, check_cancel
from ckpttui.jobs.heap import return_large_blocks
from ckpttui.jobs.select import scan_or_fail
from ckpttui.jobs.source import TensorSource
from ckpttui.jobs.weights import WeightSet, open_weights
from ckpttui.records import Category

if TYPE_CHECKING:
    import torch

CHUNK = 1 << 20  # elements per float64 step: 8 MiB per operand


@dataclass
class _Sums:
    equal: bool = True
    max_abs: float = 0.0
    sq_diff: float = 0.0
    sq_a: float = 0.0
    compared: bool = True
    integer: bool = False


def diff(
    a: str | os.PathLike[str],
    b: str | os.PathLike[str],
    *,
    include_all: bool = False,
    cancel: threading.Event | None = None,
) -> Iterator[Event]:
    """Compare checkpoint `b` against `a`; the ``done`` event carries the report."""
    wa = _open(Path(a), include_all)
    try:
        wb = _open(Path(b), include_all)
    except BaseException:
        wa.close()
        raise
    import torch

    # Chunks of a million elements, memory-bound: one thread does them faster than torch's
    # pool, whose workers spin while waiting (4x slower with 2 threads on a busy 2-core machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield from _diff(wa, wb, cancel)
    finally:
        torch.set_num_threads(threads)
        wa.close()
        wb.close()


def _open(path: Path, include_all: bool) -> WeightSet:
    inv = scan_or_fail(path) if path.exists() else None
    ws = open_weights(path, inventory=inv)
    if not include_all or inv is None:
        return ws
    ws.notes = [n for n in ws.notes if "left out" not in n]
    target = os.path.abspath(path)
    ckpt = next((c for c in inv.checkpoints if c.path == target), None)
    files = [f for f in (ckpt.files if ckpt else [target]) if f in inv.files]
    try:
        for f in files:
            index = inv.files[f] if f in inv.files else read_file(f)
            if index.error or index.format not in ("torch-zip", "torch-legacy", "safetensors"):
                continue
            records = [
                r for r in inv.records.get(f, index.tensors) if r.category is not Category.WEIGHTS
            ]
            if not records:
                continue
            source = TensorSource(f, index)
            for rec in records:
                name = rec.name if len(files) == 1 else f"{Path(f).name}/{rec.name}"
                if name not in ws.entries and rec.storage is not None:
                    ws.names.append(name)
                    ws.entries[name] = (source, rec)
    except BaseException:
        ws.close()
        raise
    return ws


def _diff(wa: WeightSet, wb: WeightSet, cancel: threading.Event | None) -> Iterator[Event]:
    in_b = set(wb.names)
    in_a = set(wa.names)
    only_a = [n for n in wa.names if n not in in_b]
    only_b = [n for n in wb.names if n not in in_a]
    common = [n for n in wa.names if n in in_b]
    changed = []
    comparable = []
    for name in common:
        ra, rb = wa.record(name), wb.record(name)
        if ra.shape != rb.shape or ra.dtype != rb.dtype:
            changed.append(
                {
                    "name": name,
                    "a": {"dtype": ra.dtype, "shape": list(ra.shape)},
                    "b": {"dtype": rb.dtype, "shape": list(rb.shape)},
                }
            )
        if ra.shape == rb.shape:
            comparable.append(name)
    total = sum(wa.record(n).nbytes + wb.record(n).nbytes for n in comparable)
    yield Event(
        "start",
        "diff",
        0,
        total,
        f"diff {wa.path.name} {wb.path.name}: {len(comparable)} tensors in common",
        {"a": str(wa.path), "b": str(wb.path)},
    )
    clock = ProgressClock("diff", total)
    done = 0
    results: dict[str, _Sums] = {}
    import torch

    return_large_blocks()
    # Two float64 buffers for the whole job: no allocation per tensor or chunk.
    longest = max((wa.record(n).numel for n in comparable), default=0)
    scratch = (
        torch.empty(min(longest, CHUNK), dtype=torch.float64),
        torch.empty(min(longest, CHUNK), dtype=torch.float64),
    )
    for name in comparable:
        check_cancel(cancel)
        owner = (wa.aliases.get(name), wb.aliases.get(name))
        if owner[0] is not None and owner[0] == owner[1] and owner[0] in results:
            results[name] = results[owner[0]]
        else:
            results[name] = _compare(wa.tensor(name), wb.tensor(name), scratch, cancel)
            wa.release(name)
            wb.release(name)
        done += wa.record(name).nbytes + wb.record(name).nbytes
        event = clock.tick(done, name)
        if event is not None:
            yield event
    event = clock.flush()
    if event is not None:
        yield event
    tensors = [_tensor_row(name, results[name]) for name in comparable]
    modules = _modules(comparable, results)
    report = {
        "a": str(wa.path),
        "b": str(wb.path),
        "layout_a": wa.layout,
        "layout_b": wb.layout,
        "identical": not only_a
        and not only_b
        and not changed
        and all(s.equal for s in results.values()),
        "only_a": only_a,
        "only_b": only_b,
        "changed": changed,
        "tensors": tensors,
        "modules": modules,
        "notes": [f"A: {n}" for n in wa.notes] + [f"B: {n}" for n in wb.notes],
    }
    differ = sum(not s.equal for s in results.values())
    yield Event(
        "done",
        "diff",
        done,
        total,
        f"{len(comparable)} tensors compared, {differ} differ; {len(only_a)} only in A, "
        f"{len(only_b)} only in B, {len(changed)} changed shape or dtype",
        report,
    )


def _compare(
    ta: torch.Tensor,
    tb: torch.Tensor,
    scratch: tuple[torch.Tensor, torch.Tensor],
    cancel: threading.Event | None,
) -> _Sums:
    """Equality of bytes, and float64 sums of the difference, a chunk of elements at a time."""
    import torch

    sums = _Sums(equal=ta.dtype == tb.dtype, integer=not ta.is_floating_point())
    fa = ta.reshape(-1)
    fb = tb.reshape(-1)
    if ta.is_complex() or tb.is_complex():
        sums.compared = False
        sums.equal = sums.equal and bool(torch.equal(fa, fb))
        return sums
    n = fa.numel()
    same_dtype = ta.dtype == tb.dtype
    xs, ys = scratch
    for i in range(0, n, CHUNK):
        check_cancel(cancel)
        ca, cb = fa[i : i + CHUNK], fb[i : i + CHUNK]
        x, y = xs[: ca.numel()], ys[: ca.numel()]
        x.copy_(ca)
        sums.sq_a += float(torch.dot(x, x))
        if same_dtype and bool(torch.equal(_bytes(ca), _bytes(cb))):
            continue  # nothing changed here: the difference adds nothing
        sums.equal = False
        y.copy_(cb)
        y.sub_(x)
        sums.sq_diff += float(torch.dot(y, y))
        top = float(y.abs_().max())
        if math.isnan(top) or top > sums.max_abs:
            sums.max_abs = top  # a NaN stays: later comparisons with it are false
    return sums


def _bytes(t: torch.Tensor) -> torch.Tensor:
    import torch

    flat = t.contiguous()
    return flat.view(torch.uint8) if flat.numel() else flat


def _number(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _rel(sq_diff: float, sq_a: float) -> float | None:
    if sq_a > 0:
        return _number(math.sqrt(sq_diff) / math.sqrt(sq_a))
    return 0.0 if sq_diff == 0 else None


def _tensor_row(name: str, s: _Sums) -> dict[str, Any]:
    if s.equal:
        row: dict[str, Any] = {"name": name, "equal": True, "max_abs": 0.0, "rel_change": 0.0}
    elif not s.compared:
        row = {"name": name, "equal": False, "max_abs": None, "rel_change": None}
    else:
        row = {
            "name": name,
            "equal": False,
            "max_abs": _number(s.max_abs),
            "rel_change": _rel(s.sq_diff, s.sq_a),
        }
    if s.integer:
        row["integer"] = True
    return row


def module_name(name: str) -> str:
    """The module a name rolls up into: its top-level prefix (``optimizer`` for key paths)."""
    if "/" in name:
        return name.split("/", 1)[0]
    return module_of(name)


def _modules(names: list[str], results: dict[str, _Sums]) -> list[dict[str, Any]]:
    acc: dict[str, dict[str, Any]] = {}
    for name in names:
        s = results[name]
        m = acc.setdefault(
            module_name(name),
            {"tensors": 0, "changed": 0, "max_abs": 0.0, "sq_diff": 0.0, "sq_a": 0.0},
        )
        m["tensors"] += 1
        m["changed"] += not s.equal
        if s.integer:
            continue  # counted, not weighed: see the module docstring
        if not s.equal:
            m["max_abs"] = max(m["max_abs"], s.max_abs)
            m["sq_diff"] += s.sq_diff
        m["sq_a"] += s.sq_a
    out = []
    for name, m in acc.items():
        out.append(
            {
                "name": name,
                "tensors": m["tensors"],
                "changed": m["changed"],
                "frozen": m["changed"] == 0,
                "max_abs": _number(m["max_abs"]),
                "rel_change": _rel(m["sq_diff"], m["sq_a"]),
            }
        )
    return out
