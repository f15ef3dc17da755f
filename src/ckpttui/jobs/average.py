"""Average: N checkpoints of one model into one, streamed tensor by tensor across the N inputs.

Inputs are checkpoints as `jobs.weights.open_weights` reads them: any layout's training saves,
checkpoint folders, plain state dicts, safetensors files (`jobs.select.select_last` and
`select_best` choose them from a run). Only the weights are read (category weights in our
accounting); optimizer state is never touched.

* Keys, shapes and dtypes must agree; the `JobError` names the first mismatch and both files,
  before any output exists.
* Floating tensors: summed in float32 (float64 for float64, complex128 for complex128 inputs), in
  the order given, divided by N, and cast back to the input dtype. This differs on purpose from
  the toolkits' scripts, which sum in the input dtype (bf16/fp16 sums lose bits).
* Integer and bool tensors (BatchNorm ``num_batches_tracked``, position ids...) are the last
  input's, unchanged. The toolkits' own scripts disagree here (each layout's
  `LoaderContract.integers` says what its script does, and the job notes repeat it); a count or an
  index averaged is no longer one.
* Tensors tied in every input (one storage, two names) stay tied in a ``.pt`` output.

Output (see `jobs.export` for each layout): ``.safetensors`` (flat), a folder with
``max_shard_size`` (shards + index), or a ``.pt``/``.ckpt``/``model.pt.avgN`` in the layout of the
inputs, with the metadata of the input the framework's own averaging script copies
(`LoaderContract.metadata_from`: the first input for some, the last for the rest), tensors in it
included.

Peak memory does not grow with N or with the model: each output tensor is computed when the
writer asks for it, into a buffer reused from tensor to tensor, from the inputs' bytes read with
``pread`` a chunk at a time (their mappings are never touched, so nothing piles up in them).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckpttui.jobs.ahead import ahead_plan
from ckpttui.jobs.events import Event, JobError
from ckpttui.jobs.export import is_torch_name, shard_size, write_output
from ckpttui.jobs.output import Planned
from ckpttui.jobs.recoverables import wants_folder
from ckpttui.jobs.source import TensorSource, torch_dtype
from ckpttui.jobs.st_writer import BufferPool, Raw, Values, tensor_bytes
from ckpttui.jobs.weights import WeightSet, open_weights
from ckpttui.layouts import layout_named

if TYPE_CHECKING:
    import torch

    from ckpttui.jobs.zero import PlannedSource
    from ckpttui.records import TensorRecord

_NUMPY = {"float16": "float16", "bfloat16": "uint16", "float32": "float32", "float64": "float64"}
"""Float dtypes averaged with numpy (the numpy dtype their bytes are read as)."""
AHEAD_SLACK = 64 << 20
"""Memory beyond the largest tensor's that computing the next mean ahead may use."""
_INTEGERS = {"bool", "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64"}
"""Dtypes taken from the last input, as they are."""


def _describe(ws: WeightSet, name: str) -> str:
    rec = ws.record(name)
    return f"{rec.dtype}{list(rec.shape)}"


def check_agree(sets: Sequence[WeightSet]) -> None:
    """Raise a `JobError` naming the first tensor whose presence, shape or dtype differs."""
    first = sets[0]
    for name in first.names:
        rec = first.record(name)
        for other in sets[1:]:
            if name not in other.entries:
                raise JobError(
                    f"cannot average: tensor {name!r} is in {first.path} but not in {other.path}"
                )
            theirs = other.record(name)
            if theirs.shape != rec.shape or theirs.dtype != rec.dtype:
                what = "shape" if theirs.shape != rec.shape else "dtype"
                raise JobError(
                    f"cannot average: tensor {name!r} differs in {what}: "
                    f"{_describe(first, name)} in {first.path}, "
                    f"{_describe(other, name)} in {other.path}"
                )
    for other in sets[1:]:
        extra = [n for n in other.names if n not in first.entries]
        if extra:
            raise JobError(
                f"cannot average: tensor {extra[0]!r} is in {other.path} but not in {first.path}"
            )


def _check_distinct(sets: Sequence[WeightSet]) -> None:
    """Refuse the same file given twice (by device and inode: symlinks, hardlinks, two paths)."""
    seen: dict[tuple[tuple[int, int], ...], Path] = {}
    for ws in sets:
        stats = [os.stat(f) for f in ws.files]
        key = tuple(sorted((st.st_dev, st.st_ino) for st in stats))
        if key in seen:
            raise JobError(
                f"cannot average: {ws.path} and {seen[key]} are the same file (a link or a "
                "repeated path); it would count twice"
            )
        seen[key] = ws.path


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype | None:
    """The dtype a mean of `dtype` values is summed in; None for integer and bool tensors."""
    import torch

    if dtype in (torch.float64, torch.complex128):
        return dtype
    if dtype.is_complex:
        return torch.complex64
    if dtype.is_floating_point:
        return torch.float32
    return None


def _mean(
    sets: Sequence[WeightSet], name: str, dtype: torch.dtype, acc_dtype: torch.dtype
) -> torch.Tensor:
    import torch

    direct = (
        torch.float32,
        torch.float64,
        torch.bfloat16,
        torch.float16,
        torch.complex64,
        torch.complex128,
    )
    acc = None
    for ws in sets:
        values = ws.tensor(name)
        if acc is None:
            acc = values.to(acc_dtype, copy=True)
        else:
            acc.add_(values if values.dtype in direct else values.to(acc_dtype))
        del values
        ws.release(name)  # this input's pages are done with: resident memory stays flat
    assert acc is not None
    acc.div_(len(sets))
    return acc.to(dtype)


CHUNK = 1 << 20
"""Bytes of an input read at a time (into a scratch buffer that stays in the CPU's cache)."""
_scratch = threading.local()


def mean_bytes(dtype: str, nbytes: int) -> int:
    """Memory a numpy mean of `nbytes` of `dtype` values holds: its output, plus a float32
    accumulator for 16-bit values."""
    return 3 * nbytes if dtype in ("bfloat16", "float16") else nbytes


def _chunk_buffers() -> tuple[memoryview, memoryview]:
    """This thread's scratch: one chunk of an input, and room for it widened to float32."""
    bufs: tuple[memoryview, memoryview] | None = getattr(_scratch, "bufs", None)
    if bufs is None:
        bufs = _scratch.bufs = (memoryview(bytearray(CHUNK)), memoryview(bytearray(2 * CHUNK)))
    return bufs


def _numpy_mean(sets: Sequence[WeightSet], name: str, dtype: str, pool: BufferPool) -> Raw | None:
    """The mean of a float tensor computed with numpy on the inputs' bytes, bit for bit what
    `_mean` computes with torch (float32 sums, or float64 for float64; IEEE add and true
    division; bfloat16 rounded to nearest even as torch rounds it). None when torch must do it:
    an input whose bytes cannot be read as they are, or NaN going into a 16-bit output (torch's
    NaN bit pattern differs by code path).

    Each input is read a chunk at a time with ``pread`` (its mapping is never touched) and added
    into the accumulator, which is the output buffer itself for float32 and float64; buffers come
    from `pool`, reused once the writer is done with them.
    """
    import numpy as np

    half = dtype in ("bfloat16", "float16")
    nbytes = sets[0].record(name).nbytes
    out = pool.take(nbytes)
    acc = np.frombuffer(
        pool.take(2 * nbytes) if half else out, np.float64 if dtype == "float64" else np.float32
    )
    for k, ws in enumerate(sets):
        if not _add_input(ws, name, dtype, acc, out if k == 0 and not half else None, k > 0):
            return None
        ws.release(name)  # what the source holds for this tensor (gathered ZeRO values) goes
    if half and np.isnan(acc).any():
        return None
    np.divide(acc, len(sets), out=acc)
    if half:
        _narrow(acc, dtype, out)
    return Raw(dtype, sets[0].record(name).shape, out)


def _add_input(
    ws: WeightSet, name: str, dtype: str, acc: Any, into: memoryview | None, add: bool
) -> bool:
    """Add (`add`) or copy one input's values of `name` into `acc` (float32 or float64), a chunk
    at a time; `into`: `acc`'s own bytes, read straight into (the first input, same dtype).
    False when the input cannot be read without torch."""
    import numpy as np

    found = _chunk_reader(*ws.entries[name])
    if found is None or found[1] != acc.nbytes // (2 if dtype in ("bfloat16", "float16") else 1):
        return False
    read, nbytes = found
    chunk, widened = _chunk_buffers()
    step = CHUNK // 2 if dtype in ("bfloat16", "float16") else CHUNK
    scale = acc.nbytes // nbytes  # accumulator bytes per input byte
    for lo in range(0, nbytes, step):
        size = min(step, nbytes - lo)
        part = acc[lo * scale // acc.itemsize : (lo + size) * scale // acc.itemsize]
        if into is not None:
            read(lo, into[lo : lo + size])
            continue
        read(lo, chunk[:size])
        if dtype == "bfloat16":  # bfloat16 is the top half of a float32: widen exactly
            values = np.frombuffer(widened[: 2 * size], np.float32) if add else part
            halves = np.frombuffer(chunk[:size], np.uint16)
            np.left_shift(halves, 16, out=values.view(np.uint32), dtype=np.uint32)
        elif dtype == "float16":
            values = np.frombuffer(widened[: 2 * size], np.float32) if add else part
            np.copyto(values, np.frombuffer(chunk[:size], np.float16))
        else:
            values = np.frombuffer(chunk[:size], acc.dtype)
            if not add:
                np.copyto(part, values)
        if add:
            np.add(part, values, out=part)
    return True


def _narrow(acc: Any, dtype: str, out: memoryview) -> None:
    """The float32 means in `acc` rounded into `out` as torch rounds them to `dtype` (bfloat16:
    to nearest even; float16: IEEE), a chunk at a time."""
    import numpy as np

    _, widened = _chunk_buffers()
    step = CHUNK // 2  # elements
    for lo in range(0, acc.size, step):
        part = acc[lo : lo + step]
        dest = out[2 * lo : 2 * (lo + part.size)]
        if dtype == "float16":
            np.copyto(np.frombuffer(dest, np.float16), part, casting="same_kind")
            continue
        bits = part.view(np.uint32)
        carry = np.frombuffer(widened[: bits.nbytes], np.uint32)
        np.right_shift(bits, 16, out=carry)
        np.bitwise_and(carry, 1, out=carry)
        np.add(carry, 0x7FFF, out=carry)
        np.add(bits, carry, out=bits)
        np.right_shift(bits, 16, out=bits)
        np.copyto(np.frombuffer(dest, np.uint16), bits, casting="unsafe")


def _chunk_reader(
    source: TensorSource | PlannedSource, rec: TensorRecord
) -> tuple[Callable[[int, memoryview], None], int] | None:
    """A function reading a tensor's bytes from its byte ``lo`` into a buffer, and their size
    (``pread`` from a file; a copy of a ZeRO folder's gathered values); None where torch must read
    it (strided, byte-swapped, empty)."""
    if isinstance(source, TensorSource):
        where = source.byte_range(rec)
        if where is None or where[1] == 0:
            return None
        start = where[0]
        return (lambda lo, dest: source.read_into(start + lo, dest)), where[1]
    raw = source.raw(rec)
    if raw is None or not raw.data.nbytes:
        return None
    data = tensor_bytes(raw)

    def copy(lo: int, dest: memoryview) -> None:
        dest[:] = data[lo : lo + len(dest)]

    return copy, len(data)


def _float_mean(sets: Sequence[WeightSet], name: str, dtype: str, pool: BufferPool) -> Values:
    """The mean of a float tensor: with numpy where it gives torch's bits, else with torch."""
    mean = _numpy_mean(sets, name, dtype, pool)
    if mean is not None:
        return mean
    torch_type = torch_dtype(dtype, name)
    acc = accumulator_dtype(torch_type)
    assert acc is not None
    return _mean(sets, name, torch_type, acc)


def _last_values(last: WeightSet, name: str) -> Values:
    source, rec = last.entries[name]
    return source.values(rec)


def plan_average(sets: Sequence[WeightSet]) -> list[Planned]:
    """One planned tensor per name of the first input: a mean, or the last input's integers.

    Float means are computed with numpy on the inputs' bytes (`_numpy_mean`) into buffers
    reused from one tensor to the next, and integers are copied as they are, so torch is imported
    only for other dtypes (complex) or NaN in a 16-bit output: its import is longer than the
    whole average of a small model.
    """
    first, last = sets[0], sets[-1]
    largest = max(
        (
            mean_bytes(r.dtype, r.nbytes)
            for r in map(first.record, first.names)
            if r.dtype in _NUMPY
        ),
        default=0,
    )
    pool = BufferPool(largest + AHEAD_SLACK)  # what the next mean computed ahead may hold
    plan = []
    for name in first.names:
        rec = first.record(name)
        owner = first.aliases.get(name)
        if owner is not None and all(ws.aliases.get(name) == owner for ws in sets[1:]):
            plan.append(Planned(name, rec.dtype, rec.shape, alias_of=owner))
            continue
        load: Callable[[], Values]
        if rec.dtype in _NUMPY:
            load = partial(_float_mean, sets, name, rec.dtype, pool)
        elif rec.dtype in _INTEGERS:
            load = partial(_last_values, last, name)
        else:
            dtype = torch_dtype(rec.dtype, str(first.path))
            acc = accumulator_dtype(dtype)
            load = (
                partial(last.tensor, name)
                if acc is None
                else partial(_mean, sets, name, dtype, acc)
            )
        plan.append(Planned(name, rec.dtype, rec.shape, load))
    return plan


def average(
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    cancel: threading.Event | None = None,
    force: bool = False,
    max_shard_size: int | str | None = None,
    recoverable: str | None = None,
    flat: bool = False,
) -> Iterator[Event]:
    """Average the weights of `inputs` (same model) into `out`; see the module for the rules.

    `recoverable` picks one weights file of checkpoint folders holding one file per module
    (``model``); `flat` writes a ``.pt`` as the bare state dict whatever the layout.
    """
    paths = [Path(p) for p in inputs]
    if not paths:
        raise JobError("average needs at least one input checkpoint")
    shard = shard_size(max_shard_size)
    sets: list[WeightSet] = []
    runner = None
    try:
        for path in paths:
            sets.append(open_weights(path, recoverable=recoverable))
        _check_distinct(sets)
        check_agree(sets)
        plan = plan_average(sets)
        # the next mean is computed while this one is written (numpy gives up the GIL): within
        # the largest tensor's memory plus AHEAD_SLACK
        costs = {p.name: mean_bytes(p.dtype, p.nbytes) for p in plan if p.dtype in _NUMPY}
        plan, runner = ahead_plan(plan, costs, AHEAD_SLACK)
        last = sets[-1]
        notes = [
            (
                f"averaging {len(sets)} checkpoints: floats summed in float32 (float64 "
                "stays float64), integer and bool tensors from the last input"
            )
        ]
        layouts = sorted({ws.layout for ws in sets})
        contract = layout_named(last.layout).contract
        meta = sets[0] if contract.metadata_from == "first" else last
        if len(layouts) > 1:
            notes.append(
                f"inputs are of layouts {', '.join(layouts)}; a .pt output follows "
                f"the last one ({last.layout})"
            )
            meta = last
        title = layout_named(last.layout).title
        if contract.integers:
            notes[0] += f" ({title}'s {contract.script} {contract.integers})"
        carries = contract.keep is not None and len(contract.keep) > 1  # more than the weights
        if wants_folder(meta, out) or (
            is_torch_name(out) and not flat and not contract.flat and carries
        ):
            notes.append(
                f"metadata from the {'first' if meta is sets[0] else 'last'} input "
                f"({meta.path.name})"
                + (f", as {title}'s {contract.script} does" if contract.copies_metadata else "")
            )
        notes.extend(dict.fromkeys(n for ws in sets for n in ws.notes))
        common: dict[str, Any] = {
            "inputs": [p for ws in sets for p in (ws.path, *ws.files)],
            "force": force,
            "cancel": cancel,
            "start_data": {"inputs": [str(ws.path) for ws in sets], "layout": last.layout},
            "sources": [s for ws in sets for s in ws.sources],
        }
        yield from write_output("average", meta, sets, plan, out, shard, flat, notes, common)
    finally:
        if runner is not None:
            runner.close()
        for ws in sets:
            ws.close()
