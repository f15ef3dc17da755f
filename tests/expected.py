"""Ground truth from the real libraries (torch, safetensors), to compare ckpttui's numbers with.

These helpers load fixture files *we wrote ourselves* with torch.load(weights_only=True), never
weights_only=False; globals that files legitimately hold are allowed by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _safe_globals() -> list[Any]:
    import numpy as np

    out: list[Any] = [np.ndarray, np.dtype]
    try:
        out.append(np._core.multiarray._reconstruct)
    except AttributeError:  # numpy < 2
        out.append(np.core.multiarray._reconstruct)
    out += [type(np.dtype(t)) for t in ("uint32", "float64", "int64")]
    return out


def _deepspeed_globals() -> list[Any]:
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def load_torch(path: Path, deepspeed: bool = False) -> Any:
    """torch.load with weights_only=True (numpy rng arrays, DeepSpeed records allowed by name)."""
    import torch

    allowed = _safe_globals() + (_deepspeed_globals() if deepspeed else [])
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, weights_only=True, map_location="cpu")


def tensors_in(obj: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Every tensor in a loaded object, by key path (dict keys, list indices)."""
    import torch

    out: dict[tuple[str, ...], Any] = {}
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(tensors_in(v, prefix + (str(k),)))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(tensors_in(v, prefix + (str(i),)))
    return out


def torch_file_truth(path: Path, deepspeed: bool = False) -> dict[str, Any]:
    """Tensor count, tensor bytes, distinct storage bytes and dtype counts of a torch file."""
    tensors = tensors_in(load_torch(path, deepspeed))
    storages = {}
    for t in tensors.values():
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
    dtypes: dict[str, int] = {}
    for t in tensors.values():
        name = str(t.dtype).removeprefix("torch.")
        dtypes[name] = dtypes.get(name, 0) + 1
    return {
        "tensors": len(tensors),
        "bytes": sum(t.numel() * t.element_size() for t in tensors.values()),
        "storage_bytes": sum(storages.values()),
        "dtypes": dtypes,
        "by_path": tensors,
    }


def safetensors_truth(path: Path) -> dict[str, Any]:
    """Tensor count and bytes of a safetensors file, read by the safetensors library itself."""
    from safetensors import safe_open

    n = nbytes = 0
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
            t = f.get_slice(key)
            numel = 1
            for d in t.get_shape():
                numel *= d
            import torch

            size = {
                "F32": 4,
                "F16": 2,
                "BF16": 2,
                "I64": 8,
                "F64": 8,
                "I32": 4,
                "U8": 1,
                "BOOL": 1,
            }[t.get_dtype()]
            n += 1
            nbytes += numel * size
            del torch
    return {"tensors": n, "bytes": nbytes}


def by_path(report: dict[str, Any], key: str) -> dict[str, Any]:
    """Index a report's files or checkpoints list by path."""
    return {entry["path"]: entry for entry in report[key]}
