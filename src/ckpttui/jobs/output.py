"""Writing a planned state dict: one safetensors file, safetensors shards + index, or a torch file.

A job first *plans* its output as a list of `Planned` tensors (name, dtype, shape, and a function
that produces the values when called), without reading tensor data; `write_planned` then checks
the target (`AtomicOutput`), writes, verifies, and yields the events:

* ``.safetensors``: streamed, one tensor in memory at a time (`SafetensorsWriter`). Safetensors
  refuses aliased storage, so an alias (tied weight) is written under its own name with its own
  copy of the bytes (the keys stay those of the state dict), and the pairs are recorded in the
  header metadata as ``ckpttui.aliases`` (JSON ``{alias: owner}``).
* a folder (when ``max_shard_size`` is given): safetensors shards and
  ``model.safetensors.index.json``.
* ``.pt``/``.bin``/``.pth``/``.ckpt``: the zip ``torch.save`` writes, streamed (`TorchZipWriter`);
  ``torch.load`` returns an ``OrderedDict`` in which an alias is the same tensor object as its
  owner, as for ``torch.save`` output.

The ``done`` event's data is the verification: the output re-read with our own readers (tensor
count and bytes must match the plan), its size on disk, and the sha256 of each file (computed
as the bytes are written).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckpttui.formats import read_file
from ckpttui.formats.unpickler import ELEMENT_SIZE
from ckpttui.jobs.atomic import AtomicOutput
from ckpttui.jobs.events import Event, JobError, ProgressClock, check_cancel
from ckpttui.jobs.heap import return_large_blocks
from ckpttui.jobs.pt_writer import TorchZipWriter, check_records
from ckpttui.jobs.source import TensorSource
from ckpttui.jobs.st_writer import (
    DEFAULT_METADATA,
    SafetensorsWriter,
    ShardedWriter,
    TensorSpec,
    Values,
    dtype_shape,
)
from ckpttui.records import shape_numel

TORCH_SUFFIXES = (".pt", ".bin", ".pth", ".ckpt")
ALIASES_KEY = "ckpttui.aliases"


@dataclass(frozen=True)
class Planned:
    """One output tensor: what it will be, and how to produce its values (None for an alias)."""

    name: str
    """Key in the output state dict."""
    dtype: str
    """torch dtype name of the output values."""
    shape: tuple[int, ...]
    """Output shape."""
    load: Callable[[], Values] | None = None
    """Produces the values (a view of the input files, a fresh tensor, or `Raw` bytes)."""
    alias_of: str | None = None
    """For a tied weight: the name of the tensor it shares values with."""

    @property
    def nbytes(self) -> int:
        """Bytes of its values."""
        return ELEMENT_SIZE.get(self.dtype, 1) * shape_numel(self.shape)


def output_kind(out: Path, max_shard_size: int | None) -> str:
    """``safetensors``, ``sharded`` or ``torch``, from the output name and options."""
    suffix = out.suffix.lower()
    if max_shard_size is not None:
        if suffix in TORCH_SUFFIXES or suffix == ".safetensors":
            raise JobError(
                f"{out}: a sharded output is a folder; give a folder name, not a {suffix} file"
            )
        return "sharded"
    if suffix == ".safetensors":
        return "safetensors"
    if suffix in TORCH_SUFFIXES:
        return "torch"
    raise JobError(
        f"{out}: name the output .safetensors, .pt or .bin (or give a max shard "
        "size to write a folder of shards)"
    )


def write_planned(
    job: str,
    plan: Sequence[Planned],
    out: str | os.PathLike[str],
    *,
    inputs: Sequence[str | os.PathLike[str]],
    force: bool = False,
    cancel: threading.Event | None = None,
    max_shard_size: int | None = None,
    metadata: dict[str, str] | None = None,
    start_data: dict[str, Any] | None = None,
    notes: Sequence[str] = (),
    sources: Sequence[TensorSource] = (),
) -> Iterator[Event]:
    """Check the target, write the plan atomically, verify it, and yield start/progress/done.

    `sources` are the mapped inputs; their pages are released after each tensor is written.
    """
    target = Path(os.path.abspath(out))
    kind = output_kind(target, max_shard_size)
    by_name = {p.name: p for p in plan}
    for p in plan:
        if p.alias_of is not None and by_name.get(p.alias_of, p).load is None:
            raise JobError(
                f"{target}: alias {p.name!r} refers to {p.alias_of!r}, which is not in the output"
            )
    copies = kind != "torch"
    total = sum(p.nbytes for p in plan if copies or p.alias_of is None)
    estimate = total + 65536 + 256 * len(plan)
    meta = dict(DEFAULT_METADATA)
    meta.update(metadata or {})
    aliases = {p.name: p.alias_of for p in plan if p.alias_of is not None}
    if aliases and copies:
        meta[ALIASES_KEY] = json.dumps(aliases, separators=(",", ":"))
    atomic = AtomicOutput(
        target, inputs=inputs, force=force, estimate=estimate, folder=kind == "sharded"
    )
    atomic.check()
    yield from start_events(job, target, kind, total, len(plan), start_data, notes)
    return_large_blocks()
    clock = ProgressClock(job, total)
    release = releaser(sources)
    with atomic as temp:
        if kind == "torch":
            digest = yield from write_torch_file(
                temp, target, target.stem or "archive", plan, clock, cancel, release
            )
            hashes = {target.name: digest}
        else:
            hashes = yield from _write_safetensors(
                temp, target.name, kind, plan, clock, cancel, meta, max_shard_size, release
            )
        last = clock.flush()
        if last is not None:
            yield last
        check_cancel(cancel)
        # Verified before it is placed: a --force job never replaces an output with a bad one.
        files = [temp] if kind != "sharded" else [temp / name for name in hashes]
        done = verify_output(job, target, kind, plan, files, hashes, total)
        check_cancel(cancel)
    yield done


def start_events(
    job: str,
    target: Path,
    kind: str,
    total: int,
    tensors: int,
    start_data: dict[str, Any] | None = None,
    notes: Sequence[str] = (),
) -> Iterator[Event]:
    """The ``start`` event of a job writing `target` (`start_data` added to its data), then one
    ``log`` event per note."""
    data = {"output": str(target), "format": kind, "tensors": tensors, **(start_data or {})}
    yield Event("start", job, 0, total, f"writing {target.name}", data)
    for note in notes:
        yield Event("log", job, 0, total, note)


def stream_plan(
    plan: Sequence[Planned],
    write: Callable[[str, Any], int],
    clock: ProgressClock,
    cancel: threading.Event | None,
    release: Callable[[], None],
    skip_aliases: bool = False,
) -> Iterator[Event]:
    """Write each planned tensor through `write`, in order, yielding progress batched in time.

    Aliases are skipped when the format stores them once (torch zip); `release` gives back the
    input pages after each tensor, so resident memory stays near one tensor.
    """
    by_name = {p.name: p for p in plan}
    done = 0
    for p in plan:
        check_cancel(cancel)
        if skip_aliases and p.alias_of is not None:
            continue
        done += write(p.name, planned_values(p, by_name))
        release()
        event = clock.tick(done, p.name)
        if event is not None:
            yield event


def releaser(sources: Sequence[TensorSource]) -> Callable[[], None]:
    """A callable that gives back the pages every source has mapped so far."""

    def release() -> None:
        for source in sources:
            source.release()

    return release


def planned_values(p: Planned, by_name: dict[str, Planned]) -> Values:
    src = by_name[p.alias_of] if p.alias_of is not None else p
    assert src.load is not None
    tensor = src.load()
    dtype, shape = dtype_shape(tensor)
    if dtype != p.dtype or shape != p.shape:
        raise JobError(
            f"tensor {p.name!r}: planned {p.dtype}{list(p.shape)} but read {dtype}{list(shape)}"
        )
    return tensor


def _write_safetensors(
    temp: Path,
    name: str,
    kind: str,
    plan: Sequence[Planned],
    clock: ProgressClock,
    cancel: threading.Event | None,
    meta: dict[str, str],
    max_shard_size: int | None,
    release: Callable[[], None],
) -> Generator[Event, None, dict[str, str]]:
    specs = [TensorSpec(p.name, p.dtype, p.shape) for p in plan]
    if kind == "sharded":
        assert max_shard_size is not None
        sharded = ShardedWriter(temp, specs, max_shard_size, meta)
        try:
            yield from stream_plan(plan, sharded.write, clock, cancel, release)
            return sharded.finish()
        finally:
            sharded.close()
    with open(temp, "wb") as f:
        writer = SafetensorsWriter(f, specs, meta, name=temp.name)
        yield from stream_plan(plan, writer.write, clock, cancel, release)
        return {name: writer.finish()}


def write_torch_file(
    path: Path,
    shown: Path,
    root: str,
    plan: Sequence[Planned],
    clock: ProgressClock,
    cancel: threading.Event | None,
    release: Callable[[], None],
    wrap: Callable[[Any], Any] | None = None,
) -> Generator[Event, None, str]:
    """Write `plan` as a torch zip at `path` (`TorchZipWriter`, root name `root`), read its
    directory and local headers back (`check_records`, errors naming `shown`); return its sha256,
    computed while writing."""
    specs = [TensorSpec(p.name, p.dtype, p.shape) for p in plan]
    aliases = {p.name: p.alias_of for p in plan if p.alias_of is not None}
    with open(path, "wb") as f:
        writer = TorchZipWriter(f, specs, aliases, root, wrap)
        try:
            yield from stream_plan(plan, writer.write, clock, cancel, release, skip_aliases=True)
            digest = writer.finish()
        except BaseException:
            writer.abort()
            raise
    check_records(path, shown, crcs=False)
    return digest


def verify_output(
    job: str,
    target: Path,
    kind: str,
    plan: Sequence[Planned],
    files: list[Path],
    hashes: dict[str, str],
    total: int,
) -> Event:
    count = 0
    tensor_bytes = 0
    for path in files:
        if path.name.endswith(".json"):
            continue
        index = read_file(path)
        if index.error:
            # `files` may still be the temporary output: name the file it is becoming
            shown = target if kind in ("safetensors", "torch") else target / path.name
            raise JobError(f"{shown}: written but does not read back: {index.error}")
        count += len(index.tensors)
        tensor_bytes += sum(t.nbytes for t in index.tensors)
    expected_bytes = sum(p.nbytes for p in plan)
    if count != len(plan) or tensor_bytes != expected_bytes:
        raise JobError(
            f"{target}: read back {count} tensors, {tensor_bytes} bytes; planned "
            f"{len(plan)} tensors, {expected_bytes} bytes"
        )
    size = sum(path.stat().st_size for path in files)
    listing = ", ".join(f"{name} {digest}" for name, digest in hashes.items())
    return Event(
        "done",
        job,
        total,
        total,
        f"verified: {count} tensors, {size} bytes, sha256 {listing}",
        {
            "output": str(target),
            "format": kind,
            "tensors": count,
            "bytes": size,
            "tensor_bytes": tensor_bytes,
            "sha256": hashes,
        },
    )
