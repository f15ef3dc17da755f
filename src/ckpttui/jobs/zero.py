"""DeepSpeed ZeRO 1/2/3 checkpoints read as ``zero_to_fp32`` reads them, without torch.load.

Follows ``deepspeed/utils/zero_to_fp32.py`` (0.19.8) step by step, on skeletons from our own
readers and tensors viewing the memory-mapped files (see /work/notes/deepspeed.md for the files):

* tag: the argument, else ``<dir>/latest``; a folder holding the rank files is also accepted.
* files: ``[prefix]zero_pp_rank_R_mp_rank_00_optim_states.pt`` for R in 0..N-1 (N from
  ``partition_count``, a list for stage 1/2, an int for stage 3) and ``mp_rank_00_model_states.pt``
  (stage 1/2) or ``zero_pp_rank_R_mp_rank_00_model_states.pt`` for each R (stage 3). Each missing
  or surplus rank file is an error that names it.
* order of keys: buffers (model order, half-precision floats cast to fp32), frozen parameters,
  trainable parameters, then aliases (``shared_params``: alias -> owner, rank 0's).
* stage 1/2: per group, the ranks' ``single_partition_of_fp32_groups[g]`` concatenated; each
  parameter in ``param_shapes[g]`` order takes the next numel elements (plus its
  ``param_alignment_paddings``); the total, rounded up to 2N, must match.
* stage 3: each rank's ``fp32_flat_groups`` concatenated; each parameter takes ``ceil(numel/N)``
  elements from every rank, concatenated in rank order and cut to numel. Frozen parameters
  likewise from the ranks' ``frozen_param_fragments``.

Where DeepSpeed is wrong ckpttui is right, unless ``compat=True`` asks for DeepSpeed's result
exactly: ZeRO-1 checkpoints record no frozen parameters (``frozen_param_shapes`` is None,
deepspeed#5439) and DeepSpeed drops them; ckpttui takes them from ``module``, where rank 0 saved
them whole. Frozen parameters come back from DeepSpeed in the model's dtype (bf16 in bf16 runs);
ckpttui upcasts half-precision frozen values to fp32 (exact) unless ``upcast_frozen=False``.
DeepSpeed also casts float64 buffers to fp32 (lossy); ckpttui keeps them float64.
"""

from __future__ import annotations

import math
import os
import re
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckpttui.formats.unpickler import ELEMENT_SIZE, OpaqueObject, TensorRef
from ckpttui.jobs.events import JobError
from ckpttui.jobs.output import Planned
from ckpttui.jobs.source import TensorSource, pread_exact, torch_dtype
from ckpttui.jobs.st_writer import Raw, Values, new_buffer

if TYPE_CHECKING:
    import torch

_OPTIM = re.compile(r"^(.*)zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt$")
_MODEL3 = re.compile(r"^zero_pp_rank_(\d+)_mp_rank_(\d+)_model_states\.pt$")
MODEL_FILE = "mp_rank_00_model_states.pt"


def resolve_tag_dir(
    src: str | os.PathLike[str], tag: str | None = None, consolidated: str = ""
) -> Path:
    """The folder holding the rank files: ``src/tag``, ``src/<latest>``, or `src` itself (also
    when reclaim slimmed it: its weights in the `consolidated` file, see `consolidated_in`)."""
    root = Path(src)
    if not root.is_dir():
        raise JobError(f"{root}: not a folder")
    if tag is not None:
        folder = root / tag
        if not folder.is_dir():
            raise JobError(f"{folder}: no such checkpoint folder (tag {tag!r})")
        return folder
    latest = root / "latest"
    if latest.is_file():
        name = latest.read_text(encoding="utf-8", errors="replace").strip()
        folder = root / name
        if not name or not folder.is_dir():
            raise JobError(f"{latest} names tag {name!r}, but {folder} is not a folder")
        return folder
    if any(_OPTIM.match(p.name) for p in root.iterdir()):
        return root
    if consolidated and consolidated_in(root, consolidated) is not None:
        return root
    raise JobError(f"{latest}: no such file, and {root} holds no ZeRO optimizer files; pass --tag")


def _stage_of(value: Any, where: Path) -> int:
    args = getattr(value, "args", ()) if isinstance(value, OpaqueObject) else ()
    if args and isinstance(args[0], int):
        value = args[0]
    if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1, 2, 3):
        return value
    raise JobError(f"{where}: unreadable zero_stage {value!r}")


@dataclass
class ZeroCheckpoint:
    """The files of one ZeRO checkpoint tag, opened for in-place reading."""

    folder: Path
    stage: int
    world_size: int
    model: list[TensorSource]
    optim: list[TensorSource]
    notes: list[str] = field(default_factory=list)
    pool: Executor | None = None
    """Threads reading ranks' pieces in parallel (None: one at a time)."""

    @property
    def files(self) -> list[Path]:
        """Every input file."""
        return [s.path for s in (*self.model, *self.optim)]

    def close(self) -> None:
        """Unmap every file."""
        for source in (*self.model, *self.optim):
            source.close()


def open_zero(folder: Path) -> ZeroCheckpoint:
    """Find, check and open the rank files of a ZeRO checkpoint folder."""
    ranks: dict[int, Path] = {}
    prefixes: set[str] = set()
    for path in sorted(folder.iterdir()):
        match = _OPTIM.match(path.name)
        if match is None:
            continue
        prefix, rank, mp = match.group(1), int(match.group(2)), int(match.group(3))
        if mp != 0:
            raise JobError(
                f"{path}: model-parallel ZeRO checkpoints (mp_rank_{mp:02d}) are not supported"
            )
        prefixes.add(prefix)
        ranks[rank] = path
    if not ranks:
        raise JobError(
            f"{folder}: no *_optim_states.pt files: not a ZeRO 1/2/3 checkpoint "
            "(stage 0 keeps its weights in mp_rank_00_model_states.pt)"
        )
    if len(prefixes) > 1:
        raise JobError(
            f"{folder}: optimizer files of several runs are mixed "
            f"({', '.join(sorted(repr(p) for p in prefixes))} prefixes)"
        )
    prefix = prefixes.pop()
    first = TensorSource(ranks[min(ranks)])
    sources = [first]
    try:
        osd = first.get("optimizer_state_dict")
        stage = _stage_of(first.get("optimizer_state_dict", "zero_stage"), first.path)
        count = osd.get("partition_count") if isinstance(osd, dict) else None
        if isinstance(count, list) and count:
            count = max(count)
        if not isinstance(count, int) or count < 1:
            raise JobError(f"{first.path}: unreadable partition_count {count!r}")
        for rank in range(count):
            path = folder / f"{prefix}zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"
            if rank not in ranks:
                raise JobError(
                    f"{path}: missing (partition_count is {count}; rank {rank} "
                    "did not save, or the folder was copied partly)"
                )
        extra = sorted(r for r in ranks if r >= count)
        if extra:
            raise JobError(
                f"{ranks[extra[0]]}: rank {extra[0]} file, but partition_count is "
                f"{count} (left over from an earlier run?)"
            )
        for rank in range(1, count):
            sources.append(_indexed(TensorSource(ranks[rank])))
        _indexed(first)
        optim = list(sources)
        if stage <= 2:
            names = [MODEL_FILE]
        else:
            names = [f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in range(count)]
        model: list[TensorSource] = []
        for name in names:
            path = folder / name
            if not path.is_file():
                raise JobError(f"{path}: missing (stage {stage}, {count} ranks)")
            model.append(TensorSource(path))
            sources.append(model[-1])
            # Other ranks' model files matter only for their frozen-parameter fragments.
            if len(model) > 1 and not model[0].get("frozen_param_shapes", default=None):
                _indexed(model[-1])
        if not isinstance(model[0].get("buffer_names", default=None), list):
            raise JobError(f"{model[0].path}: no buffer_names: not a model state checkpoint")
    except BaseException:
        for source in sources:
            source.close()
        raise
    return ZeroCheckpoint(folder, stage, count, model, optim)


def _indexed(source: TensorSource) -> TensorSource:
    """Close the file but keep its index: flat groups are then read with pread (see FlatVector).

    Many-rank checkpoints would otherwise hold two descriptors and a mapping per rank file.
    """
    if not source.big_endian:
        source.close()
    return source


def _pread_into(path: Path, dest: memoryview, offset: int) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        pread_exact(fd, dest, offset, str(path))
    finally:
        os.close(fd)


class FlatVector:
    """Several 1-D tensors in the files read as one vector; a slice may cross pieces.

    Pieces are read with ``pread`` straight into the output buffer (`read_into`), opening each
    file only for the read, so open files stay bounded whatever the number of ranks.
    """

    def __init__(self, pieces: Sequence[tuple[TensorSource, TensorRef]]) -> None:
        self.pieces = list(pieces)
        self.starts = []
        n = 0
        for _, ref in self.pieces:
            if len(ref.shape) != 1:
                raise JobError(f"flat group of shape {list(ref.shape)} is not 1-D")
            self.starts.append(n)
            n += ref.shape[0]
        self.numel = n
        dtypes = {ref.dtype for _, ref in self.pieces}
        if len(dtypes) > 1:
            raise JobError(f"flat groups disagree on dtype ({', '.join(sorted(dtypes))})")
        self.dtype = dtypes.pop() if dtypes else "float32"
        self.elsize = ELEMENT_SIZE.get(self.dtype, 4)
        self.ranges = [source.byte_range(ref) for source, ref in self.pieces]
        for (source, _), rng in zip(self.pieces, self.ranges, strict=True):
            if rng is None and source._map is None:
                raise JobError(f"{source.path}: a flat group is not one contiguous block")

    @property
    def preadable(self) -> bool:
        """Every piece is a contiguous little-endian block of its file."""
        return all(r is not None for r in self.ranges)

    def read_into(self, start: int, length: int, dest: memoryview) -> None:
        """Elements ``[start, start + length)`` as bytes into `dest`."""
        end, pos = start + length, 0
        for (source, ref), first, rng in zip(self.pieces, self.starts, self.ranges, strict=True):
            last = first + ref.shape[0]
            if last <= start or first >= end or length == 0:
                continue
            assert rng is not None
            lo, hi = max(start, first), min(end, last)
            n = (hi - lo) * self.elsize
            _pread_into(source.path, dest[pos : pos + n], rng[0] + (lo - first) * self.elsize)
            pos += n
        if pos != length * self.elsize:
            raise JobError(f"elements [{start}, {end}) lie past the flat groups' {self.numel}")

    def take(self, start: int, length: int) -> list[torch.Tensor]:
        """The tensors covering elements ``[start, start + length)``."""
        out = []
        end = start + length
        for (source, ref), first in zip(self.pieces, self.starts, strict=True):
            last = first + ref.shape[0]
            if last <= start or first >= end or length == 0:
                continue
            lo, hi = max(start, first), min(end, last)
            out.append(source.tensor(ref)[lo - first : hi - first])
        if sum(t.numel() for t in out) != length:
            raise JobError(f"elements [{start}, {end}) lie past the flat groups' {self.numel}")
        return out


def _joined(parts: list[torch.Tensor], numel: int, shape: tuple[int, ...]) -> torch.Tensor:
    import torch

    flat = parts[0] if len(parts) == 1 else torch.cat(parts, 0)
    return flat[:numel].view(shape)


def _cast(tensor: torch.Tensor, dtype: str) -> torch.Tensor:
    return tensor if str(tensor.dtype) == f"torch.{dtype}" else tensor.to(torch_dtype(dtype))


def _read(source: TensorSource, ref: TensorRef, dtype: str) -> Values:
    """One tensor of a file, cast to `dtype` (its bytes, without torch, when it stays as it is)."""
    return source.values(ref) if ref.dtype == dtype else _cast(source.tensor(ref), dtype)


def _gather(
    parts: list[tuple[TensorSource, TensorRef]], numel: int, shape: tuple[int, ...], dtype: str
) -> torch.Tensor:
    """Ranks' fragments of one tensor, concatenated, cut to `numel` and shaped."""
    return _cast(_joined([source.tensor(ref) for source, ref in parts], numel, shape), dtype)


def _slice(
    vectors: list[FlatVector],
    offset: int,
    count: int,
    numel: int,
    shape: tuple[int, ...],
    pool: Executor | None = None,
) -> Values:
    """`count` elements at `offset` of each flat vector, concatenated, cut to `numel`, shaped.

    The values are bytes read with ``pread`` (`Raw`, no torch) unless a piece is not a plain
    block of its file."""
    dtype = vectors[0].dtype
    if numel == 0:  # zero_to_fp32 fails on these under ZeRO-3; they are just empty
        return Raw(dtype, shape, memoryview(b""))
    if not all(v.preadable for v in vectors):
        return _joined([t for v in vectors for t in v.take(offset, count)], numel, shape)
    size = vectors[0].elsize
    raw = new_buffer(numel * size)
    jobs = []
    for i, vector in enumerate(vectors):
        first = i * count
        n = min(count, numel - first)  # the last ranks hold padding only
        if n > 0:
            jobs.append((vector, n, raw[first * size : (first + n) * size]))
    if pool is None or len(jobs) < 2:
        for vector, n, dest in jobs:
            vector.read_into(offset, n, dest)
    else:
        for future in [pool.submit(v.read_into, offset, n, d) for v, n, d in jobs]:
            future.result()
    return Raw(dtype, shape, raw)


def _numel(shape: Sequence[int]) -> int:
    return math.prod(int(d) for d in shape)


def _is_float(dtype: str) -> bool:
    return dtype.startswith(("float", "bfloat"))


def _narrow_float(dtype: str) -> bool:
    """Floating with fewer than 32 bits: upcasting it to float32 is exact."""
    return _is_float(dtype) and ELEMENT_SIZE.get(dtype, 8) < 4


def plan_zero(
    ckpt: ZeroCheckpoint,
    *,
    compat: bool = False,
    upcast_frozen: bool = True,
    exclude_frozen: bool = False,
) -> list[Planned]:
    """The consolidated state dict in DeepSpeed's key order, as `Planned` tensors (no data read)."""
    rank0 = ckpt.model[0]
    module = rank0.get("module")
    buffer_names = set(rank0.get("buffer_names"))
    param_shapes = rank0.get("param_shapes")
    if not isinstance(module, dict) or not isinstance(param_shapes, list):
        raise JobError(f"{rank0.path}: no module or param_shapes: not a ZeRO model state file")
    plan: OrderedDict[str, Planned] = OrderedDict()

    for name, ref in module.items():
        if name in buffer_names and isinstance(ref, TensorRef):
            dtype = ref.dtype
            if _is_float(dtype) and (compat or dtype != "float64"):
                dtype = "float32"
            plan[name] = Planned(name, dtype, ref.shape, partial(_read, rank0, ref, dtype))

    def frozen_dtype(dtype: str) -> str:
        return "float32" if upcast_frozen and not compat and _narrow_float(dtype) else dtype

    frozen_shapes = rank0.get("frozen_param_shapes", default=None)
    if not exclude_frozen and frozen_shapes:
        if ckpt.stage <= 2:
            fragments = rank0.get("frozen_param_fragments")
            for name in frozen_shapes:
                ref = fragments[name]
                dtype = frozen_dtype(ref.dtype)
                plan[name] = Planned(name, dtype, ref.shape, partial(_read, rank0, ref, dtype))
        else:
            for name, shape in frozen_shapes.items():
                refs = [(m, m.get("frozen_param_fragments", name)) for m in ckpt.model]
                dtype = frozen_dtype(refs[0][1].dtype)
                shape = tuple(shape)
                numel = _numel(shape)
                plan[name] = Planned(
                    name, dtype, shape, partial(_gather, refs, numel, shape, dtype)
                )

    trainable = [(name, tuple(shape)) for group in param_shapes for name, shape in group.items()]
    shared = rank0.get("shared_params", default=None) or {}
    if not exclude_frozen and not compat and frozen_shapes is None and ckpt.stage <= 2:
        # ZeRO-1 records no frozen parameters (deepspeed#5439): rank 0 saved them whole in module.
        known = {n for n, _ in trainable} | set(shared) | buffer_names
        kept = []
        for name, ref in module.items():
            if name in known or not isinstance(ref, TensorRef) or name in plan:
                continue
            dtype = frozen_dtype(ref.dtype)
            plan[name] = Planned(name, dtype, ref.shape, partial(_read, rank0, ref, dtype))
            kept.append(name)
        if kept:
            ckpt.notes.append(
                f"kept {len(kept)} frozen parameter(s) that DeepSpeed's zero_to_fp32 "
                f"drops on ZeRO-1 (deepspeed#5439): {', '.join(kept)}"
            )

    if ckpt.stage <= 2:
        _plan_zero2(ckpt, param_shapes, plan)
    else:
        _plan_zero3(ckpt, trainable, plan)

    for alias, owner in shared.items():
        if owner in plan:
            target = plan[owner]
            plan[alias] = Planned(alias, target.dtype, target.shape, alias_of=owner)
    return list(plan.values())


def _plan_zero2(
    ckpt: ZeroCheckpoint, param_shapes: list[Any], plan: OrderedDict[str, Planned]
) -> None:
    n = ckpt.world_size
    groups = [o.get("optimizer_state_dict", "single_partition_of_fp32_groups") for o in ckpt.optim]
    if any(len(g) != len(groups[0]) for g in groups) or len(groups[0]) != len(param_shapes):
        raise JobError(
            f"{ckpt.optim[0].path}: {len(groups[0])} fp32 groups for "
            f"{len(param_shapes)} param_shapes groups"
        )
    paddings = ckpt.optim[0].get("optimizer_state_dict", "param_alignment_paddings", default=None)
    for g, shapes in enumerate(param_shapes):
        vector = FlatVector([(o, grp[g]) for o, grp in zip(ckpt.optim, groups, strict=True)])
        pads = paddings[g] if paddings is not None else None
        if pads is not None and len(pads) != len(shapes):
            raise JobError(
                f"{ckpt.optim[0].path}: group {g} has {len(pads)} alignment paddings "
                f"for {len(shapes)} parameters"
            )
        offset = 0
        for i, (name, shape) in enumerate(shapes.items()):
            shape = tuple(shape)
            numel = _numel(shape)
            plan[name] = Planned(
                name,
                vector.dtype,
                shape,
                partial(_slice, [vector], offset, numel, numel, shape, ckpt.pool),
            )
            offset += numel + (pads[i] if pads is not None else 0)
        align = 2 * n
        if align * math.ceil(offset / align) != align * math.ceil(vector.numel / align):
            raise JobError(
                f"{ckpt.folder}: group {g}: parameters use {offset} elements of "
                f"{vector.numel} in the fp32 partitions: shapes and partitions "
                "disagree"
            )


def _plan_zero3(
    ckpt: ZeroCheckpoint,
    trainable: list[tuple[str, tuple[int, ...]]],
    plan: OrderedDict[str, Planned],
) -> None:
    n = ckpt.world_size
    vectors = [
        FlatVector([(o, ref) for ref in o.get("optimizer_state_dict", "fp32_flat_groups")])
        for o in ckpt.optim
    ]
    shapes = dict(trainable)  # later groups win, first position kept, as zero_to_fp32 merges
    offset = 0
    for name, shape in shapes.items():
        numel = _numel(shape)
        part = math.ceil(numel / n)
        plan[name] = Planned(
            name,
            vectors[0].dtype,
            shape,
            partial(_slice, vectors, offset, part, numel, shape, ckpt.pool),
        )
        offset += part
    if offset * n != vectors[0].numel * n or any(v.numel != vectors[0].numel for v in vectors):
        raise JobError(
            f"{ckpt.folder}: parameters use {offset * n} elements of "
            f"{vectors[0].numel * n} in the fp32 flat groups: shapes and partitions "
            "disagree"
        )


def consolidated_in(folder: Path, name: str) -> Path | None:
    """The consolidated weights file `name` of a tag folder that reclaim slimmed (its
    ``*_optim_states.pt`` rank files removed, the weights kept in `name`); None otherwise."""
    weights = folder / name
    if not weights.is_file() or any(_OPTIM.match(p.name) for p in folder.iterdir()):
        return None
    return weights


class PlannedSource:
    """The consolidated weights of a ZeRO folder served as a `TensorSource` serves a file's.

    Jobs that read one checkpoint's weights (`jobs.weights.WeightSet`: export, average) take an
    unslimmed tag folder through this: each tensor is gathered from the rank files when asked
    for (`plan_zero`), so memory stays near one tensor.
    """

    def __init__(self, ckpt: ZeroCheckpoint, plan: Sequence[Planned]) -> None:
        from ckpttui.records import Category, TensorRecord

        self.ckpt = ckpt
        self.path = ckpt.folder
        self._plan = {p.name: p for p in plan}
        self._held: tuple[str, Values] | None = None
        self.records = [
            TensorRecord(p.name, (p.name,), p.dtype, p.shape, p.nbytes, category=Category.WEIGHTS)
            for p in plan
        ]

    def _load(self, name: str) -> Values:
        if self._held is not None and self._held[0] == name:
            return self._held[1]
        p = self._plan[name]
        while p.load is None and p.alias_of is not None:
            p = self._plan[p.alias_of]
        assert p.load is not None
        value = p.load()
        self._held = (name, value)  # raw() then tensor() of one name gathers it once
        return value

    def values(self, rec: Any) -> Values:
        """The consolidated values of a record."""
        return self._load(rec.name)

    def raw(self, rec: Any) -> Raw | None:
        """Its bytes where they were read without torch, else None (`tensor` then has them)."""
        value = self._load(rec.name)
        return value if isinstance(value, Raw) else None

    def tensor(self, rec: Any) -> torch.Tensor:
        """The consolidated tensor of a record."""
        import torch

        value = self._load(rec.name)
        if not isinstance(value, Raw):
            return value
        dtype = torch_dtype(value.dtype)
        if not value.data.nbytes:
            return torch.empty(value.shape, dtype=dtype)
        return torch.frombuffer(value.data, dtype=torch.uint8).view(dtype).view(value.shape)

    def release(self) -> None:
        """Drop the tensor held and the rank files' pages."""
        self._held = None
        for source in (*self.ckpt.model, *self.ckpt.optim):
            source.release()

    def close(self) -> None:
        """Unmap the rank files."""
        self._held = None
        self.ckpt.close()
