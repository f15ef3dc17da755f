"""Export: a checkpoint's weights alone, as safetensors, a slim ``.pt`` in its framework's layout,
or an HF model folder; and the ``.pt`` layouts and writers that `jobs.average` shares.

Outputs, by the name of OUT and the options:

* ``*.safetensors``: the flat state dict (`jobs.output.write_planned`). A tied weight (two names,
  one storage) is written under each name with its own copy of the bytes, as safetensors refuses
  aliased storage; the pairs are listed in the header metadata (``ckpttui.aliases``). Views that
  only overlap (partitioned flat buffers) are written as each view's own values.
* a folder, with ``max_shard_size``: safetensors shards + ``model.safetensors.index.json``
  (transformers' names, `jobs.st_writer.ShardedWriter`).
* a folder, with ``config`` (an HF ``config.json`` or a model folder holding one): an HF model
  folder, ``config.json`` + ``model.safetensors`` (shards + index above ``max_shard_size``, default
  5GB, huggingface_hub's default), so ``from_pretrained`` loads it. Use ``strip_prefix`` to take an
  HF model out of a toolkit's wrapper (a recoverable that keeps it under ``model.``).
* ``*.pt``/``.bin``/``.pth``/``.ckpt`` (also ``model.pt.avg5``): the slim layout of the source,
  streamed by `TorchZipWriter` with a ``wrap``, so the framework's own loader still reads it. The
  layout's `LoaderContract` says which (`jobs.slim.slim_layout`); ``flat=True`` writes the bare
  state dict from any source.
* a folder name without a suffix, for a folder of one file per module: a folder of the same
  shape (`jobs.recoverables`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckpttui.jobs.atomic import AtomicOutput
from ckpttui.jobs.events import Event, JobError, ProgressClock, check_cancel
from ckpttui.jobs.heap import return_large_blocks
from ckpttui.jobs.output import (
    ALIASES_KEY,
    Planned,
    releaser,
    start_events,
    stream_plan,
    verify_output,
    write_planned,
    write_torch_file,
)
from ckpttui.jobs.recoverables import refuse_prefixed_file, wants_folder, write_folder
from ckpttui.jobs.slim import slim_layout
from ckpttui.jobs.source import TensorSource, torch_dtype
from ckpttui.jobs.st_writer import DEFAULT_METADATA, ShardedWriter, TensorSpec, Values
from ckpttui.jobs.weights import WeightSet, left_out, open_weights
from ckpttui.units import parse_size

if TYPE_CHECKING:
    import torch

DTYPES = {
    "fp16": "float16",
    "float16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp32": "float32",
    "float32": "float32",
    "float": "float32",
}
HF_DEFAULT_SHARD = 5 * 10**9
_TORCH_NAME = re.compile(r"\.(pt|bin|pth|ckpt)(\.[A-Za-z0-9_]+)?$", re.IGNORECASE)


def is_torch_name(path: str | os.PathLike[str]) -> bool:
    """Whether an output name asks for a torch file (``x.pt``, ``x.ckpt``, ``model.pt.avg5``)."""
    return bool(_TORCH_NAME.search(Path(path).name))


def parse_dtype(dtype: str | None) -> str | None:
    """``fp16``/``bf16``/``fp32`` (or torch's names) as a torch dtype name; None stays None."""
    if dtype is None:
        return None
    name = DTYPES.get(str(dtype).lower().removeprefix("torch."))
    if name is None:
        raise JobError(f"dtype must be fp16, bf16 or fp32, not {dtype!r}")
    return name


def shard_size(value: int | str | None) -> int | None:
    """A max shard size in bytes from an int or ``5GB``-style text; None stays None."""
    if value is None:
        return None
    try:
        size = value if isinstance(value, int) else parse_size(value)
    except ValueError as exc:
        raise JobError(str(exc)) from None
    if size <= 0:
        raise JobError(f"max shard size must be positive, not {value}")
    return size


# ------------------------------------------------------------------------------- writers


def _stream(
    plan: Sequence[Planned],
    write: Callable[[str, Any], int],
    clock: ProgressClock,
    cancel: threading.Event | None,
    sources: Sequence[TensorSource],
    skip_aliases: bool,
) -> Iterator[Event]:
    yield from stream_plan(plan, write, clock, cancel, releaser(sources), skip_aliases)
    last = clock.flush()
    if last is not None:
        yield last
    check_cancel(cancel)


def write_torch(
    job: str,
    plan: Sequence[Planned],
    out: str | os.PathLike[str],
    wrap: Callable[[Any], Any],
    *,
    inputs: Sequence[str | os.PathLike[str]],
    force: bool = False,
    cancel: threading.Event | None = None,
    start_data: dict[str, Any] | None = None,
    notes: Sequence[str] = (),
    sources: Sequence[TensorSource] = (),
) -> Iterator[Event]:
    """Write the plan as a torch.save zip whose object is ``wrap(state_dict)``, atomically."""
    return_large_blocks()
    target = Path(os.path.abspath(out))
    total = sum(p.nbytes for p in plan if p.alias_of is None)
    atomic = AtomicOutput(
        target, inputs=inputs, force=force, estimate=total + 65536 + 256 * len(plan)
    )
    atomic.check()
    yield from start_events(job, target, "torch", total, len(plan), start_data, notes)
    root = os.path.splitext(target.name)[0] or "archive"  # what torch.save names the root
    clock = ProgressClock(job, total)
    with atomic as temp:
        digest = yield from write_torch_file(
            temp, target, root, plan, clock, cancel, releaser(sources), wrap
        )
        last = clock.flush()
        if last is not None:
            yield last
        check_cancel(cancel)
        # read back before the output is placed: a bad file never replaces anything
        done = verify_output(job, target, "torch", plan, [temp], {target.name: digest}, total)
        check_cancel(cancel)
    yield done


def write_hf_folder(
    job: str,
    plan: Sequence[Planned],
    out: str | os.PathLike[str],
    config: str | os.PathLike[str],
    *,
    max_shard_size: int | None = None,
    dtype: str | None = None,
    inputs: Sequence[str | os.PathLike[str]] = (),
    force: bool = False,
    cancel: threading.Event | None = None,
    start_data: dict[str, Any] | None = None,
    notes: Sequence[str] = (),
    sources: Sequence[TensorSource] = (),
) -> Iterator[Event]:
    """Write an HF model folder: config.json (+ generation_config.json) and safetensors weights."""
    return_large_blocks()
    target = Path(os.path.abspath(out))
    if target.suffix.lower() in (".safetensors", ".pt", ".bin", ".pth", ".ckpt"):
        raise JobError(f"{target}: an HF model output is a folder; give a folder name")
    cfg_path = Path(config)
    cfg_file = cfg_path / "config.json" if cfg_path.is_dir() else cfg_path
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise JobError(f"{cfg_file}: not a readable config.json ({exc})") from None
    if not isinstance(cfg, dict):
        raise JobError(f"{cfg_file}: not a config.json (a JSON object)")
    if dtype is not None:
        for key in ("dtype", "torch_dtype"):
            if key in cfg:
                cfg[key] = dtype
    extra = {"config.json": (json.dumps(cfg, indent=2, sort_keys=True) + "\n").encode("utf-8")}
    generation = cfg_file.parent / "generation_config.json"
    if generation.is_file():
        extra["generation_config.json"] = generation.read_bytes()
    meta = dict(DEFAULT_METADATA)
    aliases = {p.name: p.alias_of for p in plan if p.alias_of is not None}
    if aliases:
        meta[ALIASES_KEY] = json.dumps(aliases, separators=(",", ":"))
    total = sum(p.nbytes for p in plan)
    atomic = AtomicOutput(
        target,
        inputs=[*inputs, cfg_file],
        force=force,
        folder=True,
        estimate=total + 65536 + 256 * len(plan) + sum(map(len, extra.values())),
    )
    atomic.check()
    described = {"config": str(cfg_file), **(start_data or {})}
    yield from start_events(job, target, "hf-folder", total, len(plan), described, notes)
    specs = [TensorSpec(p.name, p.dtype, p.shape) for p in plan]
    with atomic as temp:
        sharded = ShardedWriter(temp, specs, max_shard_size or HF_DEFAULT_SHARD, meta)
        try:
            yield from _stream(
                plan, sharded.write, ProgressClock(job, total), cancel, sources, skip_aliases=False
            )
            hashes = sharded.finish()
        finally:
            sharded.close()
        for name, data in extra.items():
            (temp / name).write_bytes(data)
            hashes[name] = hashlib.sha256(data).hexdigest()
        done = verify_output(
            job, target, "hf-folder", plan, [temp / n for n in hashes], hashes, total
        )
        check_cancel(cancel)
    yield done


def write_output(
    job: str,
    ws: WeightSet,
    sets: Sequence[WeightSet],
    plan: Sequence[Planned],
    out: str | os.PathLike[str],
    shard: int | None,
    flat: bool,
    notes: Sequence[str],
    common: dict[str, Any],
) -> Iterator[Event]:
    """Write the weights of export or average in the format OUT's name asks for: a folder of
    recoverables like `ws`'s, a slim ``.pt`` in `ws`'s layout, or safetensors (one file, or
    shards with `shard`). `sets` are the inputs (what they leave out is noted); `common` the
    writers' shared arguments (inputs, force, cancel, start_data, sources)."""
    if shard is None and wants_folder(ws, out):
        return write_folder(job, ws, plan, out, notes=[*notes, *left_out(sets)], **common)
    if is_torch_name(out):
        if shard is not None:
            raise JobError(f"{out}: shards are written as safetensors; give a folder name")
        refuse_prefixed_file(ws, out)
        slim = slim_layout(ws, flat=flat)
        kept = left_out(sets, [(1, p.nbytes) for p in slim.tensors])
        return write_torch(
            job,
            [*plan, *slim.tensors],
            out,
            slim.wrap,
            notes=[*notes, *kept, *slim.notes],
            **common,
        )
    return write_planned(
        job, plan, out, max_shard_size=shard, notes=[*notes, *left_out(sets)], **common
    )


# ------------------------------------------------------------------------------- export


def _cast(ws: WeightSet, name: str, dtype: torch.dtype | None) -> Values:
    source, rec = ws.entries[name]
    if dtype is None:  # values copied as they are: bytes, no torch, where the file allows
        return source.values(rec)
    tensor = source.tensor(rec)
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def rename_map(
    names: Sequence[str], strip_prefix: str | None, where: Path
) -> tuple[dict[str, str], list[str]]:
    """Output name of each input name after stripping a prefix; collisions are errors."""
    if not strip_prefix:
        return {n: n for n in names}, []
    renamed: dict[str, str] = {}
    owner: dict[str, str] = {}
    kept = 0
    for name in names:
        new = name.removeprefix(strip_prefix)
        kept += new == name
        if not new or new in owner:
            raise JobError(
                f"{where}: stripping {strip_prefix!r} makes {name!r} and "
                f"{owner.get(new, '')!r} the same name {new!r}"
            )
        owner[new] = name
        renamed[name] = new
    if kept == len(names):
        raise JobError(
            f"{where}: no tensor name starts with {strip_prefix!r} (the first is {names[0]!r})"
        )
    notes = (
        [f"{kept} names do not start with {strip_prefix!r} and are kept as they are"]
        if kept
        else []
    )
    return renamed, notes


def plan_export(
    ws: WeightSet, *, dtype: str | None = None, strip_prefix: str | None = None
) -> tuple[list[Planned], list[str]]:
    """The output tensors of an export: every weight, renamed, floats cast to `dtype`."""
    target = torch_dtype(dtype, str(ws.path)) if dtype is not None else None
    rename, notes = rename_map(ws.names, strip_prefix, ws.path)
    plan = []
    cast = 0
    for name in ws.names:
        rec = ws.record(name)
        out_dtype = rec.dtype
        if target is not None and torch_dtype(rec.dtype, str(ws.path)).is_floating_point:
            out_dtype = dtype  # type: ignore[assignment]
            cast += out_dtype != rec.dtype
        alias = ws.aliases.get(name)
        if alias is not None:
            plan.append(Planned(rename[name], out_dtype, rec.shape, alias_of=rename[alias]))
        else:
            load = partial(_cast, ws, name, target if out_dtype != rec.dtype else None)
            plan.append(Planned(rename[name], out_dtype, rec.shape, load))
    if target is not None:
        notes.append(f"cast {cast} floating tensors to {dtype}; others kept as they are")
    return plan, notes


def export(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    dtype: str | None = None,
    strip_prefix: str | None = None,
    max_shard_size: int | str | None = None,
    config: str | os.PathLike[str] | None = None,
    flat: bool = False,
    recoverable: str | None = None,
    cancel: threading.Event | None = None,
    force: bool = False,
) -> Iterator[Event]:
    """Write a checkpoint's weights alone (no optimizer, scheduler, scaler or rng state).

    `out` decides the format (see the module): ``.safetensors``, a folder of shards with
    `max_shard_size`, an HF model folder with `config`, or a slim ``.pt``/``.ckpt`` in the
    source's layout. `dtype` (fp16, bf16, fp32) casts floating tensors only; `strip_prefix`
    (``module.``) is removed from the names that start with it; `flat` writes a ``.pt`` as the
    bare state dict whatever the source's layout; `recoverable` takes one module's file of a
    folder that holds one per module.
    """
    name = parse_dtype(dtype)
    shard = shard_size(max_shard_size)
    ws = open_weights(src, recoverable=recoverable)
    try:
        plan, notes = plan_export(ws, dtype=name, strip_prefix=strip_prefix)
        notes = [*ws.notes, *notes]
        # what every writer below is given
        common: dict[str, Any] = {
            "inputs": [ws.path, *ws.files],
            "force": force,
            "cancel": cancel,
            "start_data": {"inputs": [str(ws.path)], "layout": ws.layout},
            "sources": ws.sources,
        }
        if config is not None:
            events = write_hf_folder(
                "export",
                plan,
                out,
                config,
                max_shard_size=shard,
                dtype=name,
                notes=[*notes, *left_out([ws])],
                **common,
            )
        else:
            events = write_output("export", ws, [ws], plan, out, shard, flat, notes, common)
        yield from events
    finally:
        ws.close()
