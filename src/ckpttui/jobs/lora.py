"""Merge a LoRA adapter into its base model, one base tensor at a time.

The adapter is described by `ckpttui.layouts.lora` (which base tensor each pair updates, and the
scaling); this module plans the output in the base's key order and computes each merged tensor
when the writer asks for it, so memory stays near the largest base tensor plus its LoRA pair.

Values follow what ``PeftModel.from_pretrained(base, adapter).merge_and_unload()`` gives on the
CPU: the adapter matrices are used in float32 (PEFT loads half-precision adapters as float32,
``autocast_adapter_dtype``), the delta is ``transpose(B @ A, fan_in_fan_out) * scaling`` in
float32, and the base tensor is updated as ``W += delta`` does: ``(W + delta)`` rounded to W's
dtype. Tensors of ``modules_to_save`` (and ``base_layer`` copies) replace the base's, cast to the
base dtype as ``load_state_dict`` copies them. Tied weights stay tied: an alias in a torch base
file stays an alias of its (merged) owner; an HF folder whose config ties the embeddings has
no second copy to write. DoRA on linear layers then rescales each output row to the saved
magnitude, as PEFT's ``DoraLinearVariant.merge_unsafe`` does.

While the writer writes, fsyncs and hashes one tensor, the next merged one is computed in a second
thread (`jobs.ahead`), its inputs read with ``pread`` into private buffers.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from ckpttui.jobs.ahead import Ahead
from ckpttui.jobs.events import Event, JobError
from ckpttui.jobs.heap import return_large_blocks
from ckpttui.jobs.output import TORCH_SUFFIXES, Planned, write_planned
from ckpttui.jobs.source import TensorSource, torch_dtype
from ckpttui.jobs.st_writer import Values
from ckpttui.layouts.lora import AdapterError, LoraAdapter, LoraPair, read_adapter
from ckpttui.records import TensorRecord, shape_numel

if TYPE_CHECKING:
    import torch

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
FILE_SUFFIXES = (*TORCH_SUFFIXES, ".safetensors")


def _is_float(dtype: str) -> bool:
    return dtype.startswith(("float", "bfloat"))


class BaseModel:
    """The base model's tensors, from an HF folder (sharded or not) or one state-dict file."""

    def __init__(self, path: Path) -> None:
        from ckpttui.jobs.merge import find_hf_shards

        self.path = path
        self.folder = path.is_dir()
        self.index: Path | None = None
        if self.folder:
            self.index, files = find_hf_shards(path)
        elif path.is_file():
            files = [path]
        else:
            raise JobError(f"{path}: no such base model file or folder")
        self.files = files
        self.sources: list[TensorSource] = []
        self.records: dict[str, tuple[TensorSource, TensorRecord]] = {}
        try:
            for file in files:
                source = TensorSource(file)
                self.sources.append(source)
                for rec in source.records:
                    if len(rec.path) != 1:
                        raise JobError(
                            f"{file}: tensor {rec.name!r} is nested; a base model is a flat "
                            "{name: tensor} state dict"
                        )
                    name = rec.path[0]
                    if name in self.records:
                        raise JobError(f"{file}: tensor {name!r} is also in another shard")
                    self.records[name] = (source, rec)
        except BaseException:
            self.close()
            raise

    def resolve(self, module: str, param: str) -> str | None:
        """The base key of ``module.param``, allowing for a head's extra or missing prefix."""
        exact = f"{module}.{param}"
        if exact in self.records:
            return exact
        parts = module.split(".")
        for i in range(1, len(parts)):
            shorter = ".".join(parts[i:]) + "." + param
            if shorter in self.records:
                return shorter
        hits = [k for k in self.records if k.endswith("." + exact)]
        return hits[0] if len(hits) == 1 else None

    def close(self) -> None:
        """Unmap every base file."""
        for source in self.sources:
            source.close()


def _float(source: TensorSource, rec: TensorRecord) -> torch.Tensor:
    import torch

    t = _read(source, rec)
    return t if t.dtype == torch.float32 else t.float()


def lora_delta(
    pair: LoraPair, a: torch.Tensor, b: torch.Tensor, base_shape: tuple[int, ...]
) -> torch.Tensor:
    """``transpose(B @ A) * scaling`` in float32, for a linear, embedding or conv base weight."""
    import torch

    if pair.kind == "embedding":
        return (b @ a).T * pair.scaling
    if pair.kind == "linear":
        delta = b @ a
        return delta.T * pair.scaling if pair.fan_in_fan_out else delta.mul_(pair.scaling)
    if tuple(base_shape[2:4]) == (1, 1):  # PEFT's 1x1 conv2d shortcut
        prod = b.squeeze(3).squeeze(2) @ a.squeeze(3).squeeze(2)
        return prod.unsqueeze(2).unsqueeze(3) * pair.scaling
    conv = {
        3: torch.nn.functional.conv1d,
        4: torch.nn.functional.conv2d,
        5: torch.nn.functional.conv3d,
    }.get(len(base_shape))
    if conv is None:
        raise JobError(f"{pair.module}: LoRA on a {len(base_shape)}-d weight is not a convolution")
    return conv(a.transpose(0, 1), b).transpose(0, 1) * pair.scaling


def _merged(
    weight: Callable[[], torch.Tensor],
    adapter: TensorSource,
    a: TensorRecord,
    b: TensorRecord,
    pair: LoraPair,
    out_dtype: str,
    magnitude: TensorRecord | None = None,
) -> torch.Tensor:
    import torch

    w = weight()
    delta = lora_delta(pair, _float(adapter, a), _float(adapter, b), tuple(w.shape))
    if tuple(delta.shape) != tuple(w.shape):
        raise JobError(
            f"{adapter.path}: LoRA of {pair.module} gives a {list(delta.shape)} update for a "
            f"{list(w.shape)} base tensor (grouped conv, or fan_in_fan_out wrong?)"
        )
    if delta.is_contiguous() and w.dtype in (torch.float32, torch.bfloat16, torch.float16):
        merged = delta.add_(w)  # the same float32 sums as W + delta, without a second buffer
    else:
        merged = w + delta
    if magnitude is not None:
        # DoRA (peft variants.py DoraLinearVariant.merge_unsafe): rescale each output row to m
        rows = merged.T if pair.fan_in_fan_out else merged
        norm = torch.linalg.norm(rows, dim=1)
        factor = (_float(adapter, magnitude) / norm).view(-1, 1)
        merged = (factor.T if pair.fan_in_fan_out else factor) * merged
    return merged.to(torch_dtype(out_dtype))


def _bias(
    weight: Callable[[], torch.Tensor],
    adapter: TensorSource,
    bias: TensorRecord,
    scaling: float,
    out_dtype: str,
) -> torch.Tensor:
    return (weight() + _float(adapter, bias) * scaling).to(torch_dtype(out_dtype))


def _read(source: TensorSource, rec: TensorRecord) -> torch.Tensor:
    """A private copy of a tensor, read with pread (not the mapping).

    Merged tensors are computed in a second thread while the writer releases the mapped pages of
    the tensor it just wrote; a copy keeps those computations off the mapping, so no page they
    fault in outlives the tensor.
    """
    import torch

    span = source.byte_range(rec)
    if span is None:
        return source.tensor(rec).clone()
    out = torch.empty(tuple(rec.shape), dtype=torch_dtype(rec.dtype, str(source.path)))
    if span[1]:
        dest = memoryview(out.reshape(-1).view(torch.uint8).numpy().data)
        with open(source.path, "rb", buffering=0) as f:
            done = 0
            while done < span[1]:
                n = f.readinto(dest[done:]) if f.seek(span[0] + done) >= 0 else 0
                if not n:
                    raise JobError(f"{source.path}: ends inside tensor {rec.name!r} (truncated?)")
                done += n
    return out


def _private(source: TensorSource, rec: TensorRecord, dtype: str) -> torch.Tensor:
    t = _read(source, rec)
    return t if rec.dtype == dtype else t.to(torch_dtype(dtype))


def _copy(source: TensorSource, rec: TensorRecord, out_dtype: str) -> torch.Tensor:
    if rec.dtype == out_dtype:
        return source.tensor(rec)  # a view of the mapping, written by the main thread
    return _read(source, rec).to(torch_dtype(out_dtype))


def _cast(load: Callable[[], torch.Tensor], dtype: str) -> torch.Tensor:
    return load().to(torch_dtype(dtype))


def plan_lora(
    adapter: LoraAdapter,
    src: TensorSource,
    base: BaseModel,
    dtype: str | None,
    ahead: Callable[[list[tuple[str, Callable[[], Values], bool, int]]], Ahead] | None = None,
) -> list[Planned]:
    """The merged state dict in the base's key order, as `Planned` tensors (no data read)."""
    adapter_recs = {rec.name: rec for rec in src.records}
    owners: dict[tuple[object, ...], str] = {}
    aliases: dict[str, str] = {}
    for name, (source, rec) in base.records.items():
        if source.index.format == "safetensors":
            continue
        tie = (id(source), rec.storage, rec.storage_offset, rec.shape, rec.stride, rec.dtype)
        if tie in owners:
            aliases[name] = owners[tie]
        else:
            owners[tie] = name

    def out_dtype(d: str) -> str:
        return dtype if dtype is not None and _is_float(d) else d

    def target(module: str, param: str, what: str) -> str:
        key = base.resolve(module, param)
        if key is None:
            raise JobError(
                f"{src.path}: {what} {module}.{param}, which {base.path} does not have "
                "(a tied weight saved once, or a different base model?)"
            )
        return aliases.get(key, key)

    # What W is before the LoRA update: the base's, or the adapter's saved copy (base_layer,
    # modules_to_save), cast to the base dtype as load_state_dict copies it.
    origin: dict[str, Callable[[], torch.Tensor]] = {}
    extra: list[Planned] = []
    for name, key in adapter.replace.items():
        rec = adapter_recs[key]
        found = base.resolve(*name.rsplit(".", 1)) if "." in name else None
        if found is None:
            d = out_dtype(rec.dtype)
            extra.append(Planned(name, d, rec.shape, partial(_copy, src, rec, d)))
            continue
        found = aliases.get(found, found)
        brec = base.records[found][1]
        if tuple(brec.shape) != tuple(rec.shape):
            raise JobError(
                f"{src.path}: {key} is {list(rec.shape)} but base tensor {found!r} is "
                f"{list(brec.shape)}"
            )
        origin[found] = partial(_private, src, rec, brec.dtype)

    def weight(name: str) -> Callable[[], torch.Tensor]:
        source, rec = base.records[name]
        return origin.get(name) or partial(_read, source, rec)

    loads: dict[str, Callable[[], torch.Tensor]] = {}
    for pair in adapter.pairs:
        name = target(pair.module, pair.param, "LoRA updates")
        if name in loads:
            raise JobError(f"{src.path}: two LoRA updates reach base tensor {name!r}")
        rec = base.records[name][1]
        if not _is_float(rec.dtype):
            raise JobError(f"{base.path}: LoRA target {name!r} is {rec.dtype}, not floating")
        loads[name] = partial(
            _merged,
            weight(name),
            src,
            adapter_recs[pair.a_key],
            adapter_recs[pair.b_key],
            pair,
            out_dtype(rec.dtype),
            adapter_recs[pair.magnitude_key] if pair.magnitude_key else None,
        )
        if pair.bias_key is not None:
            bname = target(pair.module, "bias", "lora_bias updates")
            brec = base.records[bname][1]
            loads[bname] = partial(
                _bias,
                weight(bname),
                src,
                adapter_recs[pair.bias_key],
                pair.scaling,
                out_dtype(brec.dtype),
            )
    for name, load in origin.items():
        if name not in loads:
            d = out_dtype(base.records[name][1].dtype)
            loads[name] = load if d == base.records[name][1].dtype else partial(_cast, load, d)

    plan = []
    for name, (source, rec) in base.records.items():
        d = out_dtype(rec.dtype)
        if name in aliases:
            plan.append(Planned(name, d, rec.shape, alias_of=aliases[name]))
        else:
            plan.append(
                Planned(name, d, rec.shape, loads.get(name) or partial(_copy, source, rec, d))
            )
    plan += extra
    if ahead is None:
        return plan
    heavy = set(loads) | {
        p.name for p in plan if p.alias_of is None and p.dtype != _dtype_of(p, base)
    }

    def cost(p: Planned) -> int:
        # input pages + float32 product + output while computed; a plain copy holds its input
        return 2 * p.nbytes + 4 * shape_numel(p.shape) if p.name in heavy else p.nbytes

    runner = ahead([(p.name, p.load, p.name in heavy, cost(p)) for p in plan if p.load is not None])
    return [
        p if p.load is None else Planned(p.name, p.dtype, p.shape, partial(runner.get, p.name))
        for p in plan
    ]


def _dtype_of(p: Planned, base: BaseModel) -> str:
    found = base.records.get(p.name)
    return found[1].dtype if found is not None else p.dtype


def merge_lora(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    base: str | os.PathLike[str],
    dtype: str | None = None,
    max_shard_size: int | str | None = None,
    cancel: threading.Event | None = None,
    force: bool = False,
) -> Iterator[Event]:
    """Merge the LoRA adapter folder `src` into `base`, as PEFT's merge_and_unload does.

    ``out`` is a ``.safetensors`` or ``.pt``/``.bin`` file, or a folder: an HF model folder
    (config copied, loadable by ``from_pretrained``) when `base` is one, safetensors shards with
    ``max_shard_size``. ``dtype`` (``fp32``/``bf16``/``fp16``) casts floating tensors once, after
    the merge in float32.
    """
    from ckpttui.jobs.merge import _shard_size

    shard = _shard_size(max_shard_size)
    cast = None
    if dtype is not None:
        cast = DTYPES.get(dtype, dtype)
        if cast not in DTYPES.values():
            raise JobError(f"--dtype {dtype}: choose fp32, bf16 or fp16")
    folder = Path(src)
    try:
        adapter = read_adapter(folder)
    except AdapterError as exc:
        raise JobError(str(exc)) from None
    target = Path(out)
    base_path = Path(base)
    to_folder = target.suffix.lower() not in FILE_SUFFIXES
    if to_folder and shard is None and not base_path.is_dir():
        raise JobError(
            f"{target}: an HF folder output needs an HF model folder as the base; name the "
            "output .safetensors or .pt, or give --max-shard-size"
        )
    model = BaseModel(base_path)
    runners: list[Ahead] = []

    def ahead(loads: list[tuple[str, Callable[[], Values], bool, int]]) -> Ahead:
        runners.append(Ahead(loads))
        return runners[-1]

    try:
        with TensorSource(adapter.weights) as asrc:
            plan = plan_lora(adapter, asrc, model, cast, ahead)
            inputs = [
                *model.files,
                *([model.index] if model.index else []),
                adapter.weights,
                folder,
            ]
            start = {
                "inputs": [str(p) for p in inputs],
                "adapter": str(folder),
                "library": adapter.library,
                "lora_modules": len(adapter.pairs),
                "replaced": len(adapter.replace),
            }
            notes = [
                f"{adapter.library} LoRA: {len(adapter.pairs)} module(s) merged, "
                f"{len(adapter.replace)} tensor(s) replaced (modules_to_save)",
                *adapter.notes,
            ]
            sources = [*model.sources, asrc]
            if to_folder and model.folder:
                from ckpttui.jobs.export import write_hf_folder

                return_large_blocks()
                yield from write_hf_folder(
                    "merge-lora",
                    plan,
                    target,
                    model.path / "config.json",
                    max_shard_size=shard,
                    dtype=cast,
                    inputs=inputs,
                    force=force,
                    cancel=cancel,
                    start_data=start,
                    notes=notes,
                    sources=sources,
                )
            else:
                yield from write_planned(
                    "merge-lora",
                    plan,
                    target,
                    inputs=inputs,
                    force=force,
                    cancel=cancel,
                    max_shard_size=shard,
                    start_data=start,
                    notes=notes,
                    sources=sources,
                )
    finally:
        for runner in runners:
            runner.close()
        model.close()
