"""WeNet checkpoints (wenet/utils/checkpoint.py ``save_checkpoint``, wenet/utils/train_utils.py).

``epoch_{N}.pt`` / ``step_{N}.pt`` hold a plain ``model.state_dict()``; beside each, ``epoch_{N}.yaml``
holds the info dict (``epoch``, ``step``, ``cv_loss``/``loss_dict``, ``lr``, ``save_time`` and the
training config). ``init.pt``, ``final.pt`` and ``avg_{N}.pt`` use the same format. With DeepSpeed
the ``.pt`` name is a tag folder instead (see layouts.deepspeed).
"""

from __future__ import annotations

import re
from pathlib import Path

from ckpttui.layouts.base import as_int, number_in, plain, read_yaml
from ckpttui.records import Checkpoint, FileIndex

_NAME = re.compile(r"^(epoch_\d+|step_\d+|init|final|avg_\d+|avg\d+)\.pt$")
_METRICS = ("epoch", "step", "cv_loss", "loss", "lr", "save_time", "tag", "train_engine",
            "loss_dict", "batch_idx")


class WeNet:
    """``epoch_N.pt`` with its ``epoch_N.yaml`` sidecar."""

    name = "wenet"

    def claims(self, path: Path, index: FileIndex | None) -> bool:
        """WeNet names with a YAML sidecar (or a sibling ``epoch_*.yaml``)."""
        if not _NAME.match(path.name):
            return False
        if path.with_suffix(".yaml").is_file():
            return True
        return any(p.name.startswith("epoch_") and p.suffix == ".yaml"
                   for p in path.parent.iterdir())

    def describe(self, ckpt: Checkpoint, index: FileIndex | None) -> None:
        """Epoch, step and cv loss from the YAML sidecar."""
        path = Path(ckpt.path)
        ckpt.epoch = number_in(r"^epoch_(\d+)\.pt$", path.name)
        ckpt.step = number_in(r"^step_(\d+)\.pt$", path.name)
        sidecar = path.with_suffix(".yaml")
        if sidecar.is_file():
            ckpt.files.append(str(sidecar))
            info, err = read_yaml(sidecar)
            if err:
                ckpt.problems.append(err)
            elif isinstance(info, dict):
                for key in _METRICS:
                    if key in info:
                        ckpt.info[key] = plain(info[key])
                ckpt.epoch = as_int(info.get("epoch")) if ckpt.epoch is None else ckpt.epoch
                ckpt.step = as_int(info.get("step")) if ckpt.step is None else ckpt.step
        if path.is_symlink():
            ckpt.info["symlink_to"] = str(path.readlink())
