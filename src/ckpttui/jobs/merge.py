"""Merge jobs: DeepSpeed ZeRO into one fp32 state dict; HF shards into one file or new shards;
a LoRA adapter into its base (`jobs.lora`); a torch.distributed.checkpoint folder (`jobs.dcp_merge`).
`merge` picks the right one from the input.

Both are generators of `Event`s (``start``, ``log``, ``progress``, ``done``) that read tensor data
in place from memory-mapped inputs and stream it to the output (see `jobs.output` for formats,
tied weights and peak memory). They raise `JobError` naming the file, or `JobCancelled`; the
output is then absent and the inputs untouched.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from ckpttui.jobs.events import Event, JobError
from ckpttui.jobs.output import Planned, write_planned
from ckpttui.jobs.source import TensorSource
from ckpttui.jobs.zero import consolidated_in, open_zero, plan_zero, resolve_tag_dir
from ckpttui.layouts import layout_named
from ckpttui.units import parse_size

DEFAULT_WORKERS = 4  # parallel pread of ranks' pieces; page-cache copies scale past the cores
HF_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
HF_SINGLE = ("model.safetensors", "pytorch_model.bin")


def _shard_size(value: int | str | None) -> int | None:
    if value is None or isinstance(value, int):
        if isinstance(value, int) and value <= 0:
            raise JobError(f"max shard size must be positive, not {value}")
        return value
    try:
        return parse_size(value)
    except ValueError as exc:
        raise JobError(str(exc)) from None


def merge_zero(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    tag: str | None = None,
    cancel: threading.Event | None = None,
    force: bool = False,
    max_shard_size: int | str | None = None,
    compat: bool = False,
    upcast_frozen: bool = True,
    exclude_frozen: bool = False,
    workers: int | None = None,
) -> Iterator[Event]:
    """Consolidate DeepSpeed ZeRO 1/2/3 rank files into one state dict, as zero_to_fp32 does.

    The values equal ``deepspeed.utils.zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint``
    bit for bit, with the same keys in the same order, except where DeepSpeed is wrong (see
    `ckpttui.jobs.zero`): ZeRO-1 frozen parameters are kept (DeepSpeed drops them,
    deepspeed#5439); half-precision frozen parameters are upcast to fp32, which is exact
    (``upcast_frozen=False`` keeps DeepSpeed's bf16/fp16); float64 buffers stay float64.
    ``compat=True`` reproduces DeepSpeed's output exactly, faults included. Ranks' pieces are
    read with ``pread`` straight into each output tensor, by `workers` threads (default 4);
    memory stays near the largest tensor and open files near two, whatever the number of ranks. ``out`` is
    ``.safetensors``, ``.pt``/``.bin`` (torch.save's zip) or, with ``max_shard_size``, a folder
    of safetensors shards plus index; all are streamed, one tensor in memory at a time.
    """
    shard = _shard_size(max_shard_size)
    name = layout_named("deepspeed").consolidated
    folder = resolve_tag_dir(src, tag, name)
    done = consolidated_in(folder, name)
    if done is not None:
        changed = [
            flag
            for flag, on in (
                ("compat", compat),
                ("exclude_frozen", exclude_frozen),
                ("upcast_frozen=False", not upcast_frozen),
            )
            if on
        ]
        if changed:
            raise JobError(
                f"{folder}: already consolidated into {done.name} (reclaim removed the rank "
                f"files); {', '.join(changed)} need the rank files"
            )
        yield from _merge_consolidated(folder, done, out, force, cancel, shard)
        return
    ckpt = open_zero(folder)
    n_workers = max(1, workers if workers is not None else DEFAULT_WORKERS)
    ckpt.pool = ThreadPoolExecutor(n_workers) if n_workers > 1 and ckpt.world_size > 1 else None
    try:
        plan = plan_zero(
            ckpt, compat=compat, upcast_frozen=upcast_frozen, exclude_frozen=exclude_frozen
        )
        start = {
            "inputs": [str(p) for p in ckpt.files],
            "folder": str(folder),
            "tag": folder.name,
            "zero_stage": ckpt.stage,
            "world_size": ckpt.world_size,
        }
        yield from write_planned(
            "merge",
            plan,
            out,
            inputs=[*ckpt.files, folder],
            force=force,
            cancel=cancel,
            max_shard_size=shard,
            start_data=start,
            notes=ckpt.notes,
            sources=[*ckpt.model, *ckpt.optim],
        )
    finally:
        ckpt.close()
        if ckpt.pool is not None:
            ckpt.pool.shutdown()


def _merge_consolidated(
    folder: Path,
    weights: Path,
    out: str | os.PathLike[str],
    force: bool,
    cancel: threading.Event | None,
    shard: int | None,
) -> Iterator[Event]:
    """A tag folder reclaim slimmed: its consolidated weights file, written to `out`.

    Reclaim wrote there exactly what merging the rank files gives (`plan_zero`, the defaults),
    so the merge asked for is that file in the output's format: scripts and the app that merge
    every tag of a run keep working, and the message says where the weights already are.
    """
    source = TensorSource(weights)
    try:
        plan = _plan_shard(source, {})
        yield from write_planned(
            "merge",
            plan,
            out,
            inputs=[weights, folder],
            force=force,
            cancel=cancel,
            max_shard_size=shard,
            start_data={
                "inputs": [str(weights)],
                "folder": str(folder),
                "tag": folder.name,
                "consolidated": str(weights),
            },
            notes=[
                f"{folder.name} is already consolidated (slimmed by reclaim): its weights are "
                f"{weights}; written from that file"
            ],
            sources=[source],
        )
    finally:
        source.close()


def _natural(text: str) -> list[int | str]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def find_hf_shards(folder: Path) -> tuple[Path | None, list[Path]]:
    """The index file (if any) and the weight files of an HF model folder, in shard order."""
    for name in HF_INDEXES:
        index = folder / name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                files = sorted({str(v) for v in weight_map.values()}, key=_natural)
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise JobError(f"{index}: not a sharded-checkpoint index ({exc})") from None
            for fname in files:
                if "/" in fname or "\\" in fname or fname in ("", ".", ".."):
                    raise JobError(f"{index}: names {fname!r}, which is not a file in {folder}")
            paths = [folder / f for f in files]
            for path in paths:
                if not path.is_file():
                    raise JobError(f"{path}: missing (listed in {index.name})")
            return index, paths
    for name in HF_SINGLE:
        if (folder / name).is_file():
            return None, [folder / name]
    raise JobError(f"{folder}: no {' or '.join(HF_INDEXES)} and no single weights file")


def merge_hf_shards(
    folder: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    max_shard_size: int | str | None = None,
    cancel: threading.Event | None = None,
    force: bool = False,
) -> Iterator[Event]:
    """Join an HF sharded checkpoint (safetensors or .bin + index) into one file, or re-shard it."""
    shard = _shard_size(max_shard_size)
    root = Path(folder)
    if not root.is_dir():
        raise JobError(f"{root}: not a folder")
    index, paths = find_hf_shards(root)
    wanted: dict[str, str] | None = None
    if index is not None:
        wanted = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    sources: list[TensorSource] = []
    try:
        plan: list[Planned] = []
        seen: dict[str, Path] = {}
        metadata: dict[str, str] = {}
        for path in paths:
            source = TensorSource(path)
            sources.append(source)
            if source.index.format == "safetensors" and not metadata:
                meta = source.index.metadata.get("__metadata__") or {}
                metadata = {str(k): str(v) for k, v in meta.items()}
            plan.extend(_plan_shard(source, seen))
        if wanted is not None:
            for name, fname in wanted.items():
                if seen.get(name, Path()).name != fname:
                    raise JobError(
                        f"{root / fname}: has no tensor {name!r} (the index says it should)"
                    )
        inputs = [*paths, *([index] if index is not None else [])]
        yield from write_planned(
            "merge-hf",
            plan,
            out,
            inputs=inputs,
            force=force,
            cancel=cancel,
            max_shard_size=shard,
            metadata=metadata,
            start_data={"inputs": [str(p) for p in inputs]},
            sources=sources,
        )
    finally:
        for source in sources:
            source.close()


def _plan_shard(source: TensorSource, seen: dict[str, Path]) -> list[Planned]:
    plan = []
    owners: dict[tuple[object, ...], str] = {}
    for rec in source.records:
        if len(rec.path) != 1:
            raise JobError(
                f"{source.path}: tensor {rec.name!r} is nested; an HF shard is a "
                "flat {name: tensor} dict"
            )
        name = rec.path[0]
        if name in seen:
            raise JobError(f"{source.path}: tensor {name!r} is also in {seen[name]}")
        seen[name] = source.path
        # torch shards may tie two names to one tensor: keep that as an alias
        key = (rec.storage, rec.storage_offset, rec.shape, rec.stride, rec.dtype)
        owner = owners.get(key) if source.index.format != "safetensors" else None
        if owner is not None:
            plan.append(Planned(name, rec.dtype, rec.shape, alias_of=owner))
            continue
        owners[key] = name
        plan.append(Planned(name, rec.dtype, rec.shape, partial(source.values, rec)))
    return plan


def merge(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    base: str | os.PathLike[str] | None = None,
    dtype: str | None = None,
    with_optimizer: bool = False,
    workers: int | None = None,
    tag: str | None = None,
    max_shard_size: int | str | None = None,
    compat: bool = False,
    upcast_frozen: bool = True,
    exclude_frozen: bool = False,
    cancel: threading.Event | None = None,
    force: bool = False,
) -> Iterator[Event]:
    """The merge `src` calls for: LoRA into `base`, a DCP folder, HF shards, or ZeRO rank files."""
    from ckpttui.layouts.lora import is_adapter_folder

    root = Path(src)
    if base is not None:
        from ckpttui.jobs.lora import merge_lora

        return merge_lora(
            root,
            out,
            base=base,
            dtype=dtype,
            max_shard_size=max_shard_size,
            cancel=cancel,
            force=force,
        )
    if is_adapter_folder(root):
        raise JobError(f"{root}: an adapter; give the model to merge it into with --base")
    if dtype is not None:
        raise JobError("--dtype applies to LoRA merges (with --base)")
    if (root / ".metadata").is_file():
        from ckpttui.jobs.dcp_merge import merge_dcp

        return merge_dcp(
            root,
            out,
            with_optimizer=with_optimizer,
            max_shard_size=max_shard_size,
            workers=workers,
            cancel=cancel,
            force=force,
        )
    if root.is_dir() and any(root.glob("*.index.json")):
        return merge_hf_shards(root, out, max_shard_size=max_shard_size, cancel=cancel, force=force)
    return merge_zero(
        root,
        out,
        tag=tag,
        cancel=cancel,
        force=force,
        max_shard_size=max_shard_size,
        compat=compat,
        upcast_frozen=upcast_frozen,
        exclude_frozen=exclude_frozen,
        workers=workers,
    )
