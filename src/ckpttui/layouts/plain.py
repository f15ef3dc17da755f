"""Any other file of tensors: a ``torch.save`` state dict or dict, a safetensors file, a pickle."""

from __future__ import annotations

from pathlib import Path

from ckpttui.layouts.base import as_int, number_in
from ckpttui.records import Checkpoint, FileIndex


class PlainTorch:
    """The fallback: a plain state dict or dict of training state."""

    name = "torch"

    def claims(self, path: Path, index: FileIndex | None) -> bool:
        """Every checkpoint-like file no other layout claimed."""
        return True

    def describe(self, ckpt: Checkpoint, index: FileIndex | None) -> None:
        """Epoch and step where the dict or the name records them."""
        data = index.data if index else None
        name = Path(ckpt.path).name
        if isinstance(data, dict):
            ckpt.epoch = as_int(data.get("epoch"))
            ckpt.step = as_int(data.get("step", data.get("global_step")))
        if ckpt.epoch is None:
            ckpt.epoch = number_in(r"(?:epoch|ep)[_=-]?(\d+)", name)
        if ckpt.step is None:
            ckpt.step = number_in(r"(?:step|iter|global_step)[_=-]?(\d+)", name)
