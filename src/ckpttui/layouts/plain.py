"""Any other file of tensors: a ``torch.save`` state dict or dict, a safetensors file, a pickle."""

from __future__ import annotations

from pathlib import Path

from ckpttui.layouts.base import Layout, LoaderContract, as_int, number_in
from ckpttui.records import Checkpoint, FileIndex


class PlainTorch(Layout):
    """The fallback: a plain state dict or dict of training state."""

    name = "torch"
    title = "torch.save"
    # A slim file keeps the state dict under the same keys, with the plain counters a resume
    # script reads beside it (``epoch``, ``step``); everything else is named as left out.
    contract = LoaderContract(keep=("epoch", "step", "global_step", "iteration", "iter"))

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
