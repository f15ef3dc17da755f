"""PyTorch Lightning ``.ckpt`` files (lightning/pytorch/trainer/connectors/checkpoint_connector.py
``dump_checkpoint``): ``epoch``, ``global_step``, ``pytorch-lightning_version``, ``state_dict``,
``loops``, ``callbacks``, ``optimizer_states``, ``lr_schedulers``, ``hyper_parameters``...
"""

from __future__ import annotations

from pathlib import Path

from ckpttui.layouts.base import as_int, number_in, plain
from ckpttui.records import Checkpoint, FileIndex


class Lightning:
    """A Lightning checkpoint (``epoch=3-step=1000.ckpt``, ``last.ckpt``)."""

    name = "lightning"

    def claims(self, path: Path, index: FileIndex | None) -> bool:
        """Dicts carrying ``pytorch-lightning_version``."""
        data = index.data if index else None
        return isinstance(data, dict) and "pytorch-lightning_version" in data

    def describe(self, ckpt: Checkpoint, index: FileIndex | None) -> None:
        """Epoch and global step from the dict (or the file name)."""
        data = index.data if index else {}
        name = Path(ckpt.path).name
        ckpt.epoch = as_int(data.get("epoch")) if isinstance(data, dict) else None
        ckpt.step = as_int(data.get("global_step")) if isinstance(data, dict) else None
        if ckpt.epoch is None:
            ckpt.epoch = number_in(r"epoch=(\d+)", name)
        if ckpt.step is None:
            ckpt.step = number_in(r"step=(\d+)", name)
        if isinstance(data, dict):
            ckpt.info["pytorch-lightning_version"] = plain(data.get("pytorch-lightning_version"))
            if isinstance(data.get("hyper_parameters"), dict):
                ckpt.info["hyper_parameters"] = plain(data["hyper_parameters"])
