"""WeNet checkpoints (wenet/utils/checkpoint.py ``save_checkpoint``, wenet/utils/train_utils.py).

``epoch_{N}.pt`` / ``step_{N}.pt`` hold a plain ``model.state_dict()``; beside each, ``epoch_{N}.yaml``
holds the info dict (``epoch``, ``step``, ``cv_loss``/``loss_dict``, ``lr``, ``save_time`` and the
training config). ``init.pt``, ``final.pt`` and ``avg_{N}.pt`` use the same format; WeNet 2.x named them ``{N}.pt``.
With DeepSpeed, ``epoch_{N}/`` is a ZeRO tag folder (layouts.deepspeed), and with the default
``save_states=model_only`` it is converted into an ``epoch_{N}.pt/`` folder holding
``pytorch_model.bin`` (`WeNetFolder`).
"""

from __future__ import annotations

import re
from pathlib import Path

from ckpttui.layouts.base import as_int, number_in, plain, read_yaml
from ckpttui.records import Checkpoint, FileIndex

_NAME = re.compile(r"^(epoch_\d+|step_\d+|init|final|avg_\d+|avg\d+|\d+)\.pt$")
_SIDECAR = re.compile(r"^(epoch_|step_)?\d+\.yaml$")
_METRICS = (
    "epoch",
    "step",
    "cv_loss",
    "loss",
    "lr",
    "lrs",
    "save_time",
    "tag",
    "train_engine",
    "loss_dict",
    "batch_idx",
)


class WeNet:
    """``epoch_N.pt`` with its ``epoch_N.yaml`` sidecar."""

    name = "wenet"

    def claims(self, path: Path, index: FileIndex | None) -> bool:
        """WeNet names with a YAML sidecar (or a sibling ``epoch_*.yaml``)."""
        if not _NAME.match(path.name):
            return False
        if path.with_suffix(".yaml").is_file():
            return True
        return any(_SIDECAR.match(p.name) for p in path.parent.iterdir())

    def describe(self, ckpt: Checkpoint, index: FileIndex | None) -> None:
        """Epoch, step and cv loss from the YAML sidecar."""
        path = Path(ckpt.path)
        ckpt.epoch = number_in(r"^(?:epoch_)?(\d+)\.pt$", path.name)
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


class WeNetFolder:
    """``epoch_N.pt/`` folders holding ``pytorch_model.bin`` (WeNet + DeepSpeed, model_only)."""

    name = "wenet"

    def claims(self, folder: Path, names: set[str]) -> bool:
        """A folder with a WeNet checkpoint name and consolidated weights inside."""
        return bool(_NAME.match(folder.name)) and any(
            n.startswith("pytorch_model") or n.endswith(".safetensors") for n in names
        )

    def describe(self, ckpt: Checkpoint, indexes: dict[str, FileIndex]) -> None:
        """Epoch and metrics from the sidecar YAML beside the folder."""
        WeNet().describe(ckpt, None)
