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

from ckpttui.layouts.base import (
    Layout,
    LoaderContract,
    Ranked,
    as_int,
    dig,
    lower_is_better,
    number,
    number_in,
    plain,
    rank,
    read_yaml,
)
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


class WeNet(Layout):
    """``epoch_N.pt`` with its ``epoch_N.yaml`` sidecar."""

    name = "wenet"
    title = "WeNet"
    training = True
    candidate = re.compile(r"^(epoch_|step_)?\d+\.pt$")
    # wenet/bin/average_model.py: a bare state dict, integers divided into floats.
    contract = LoaderContract(
        flat=True,
        script="wenet/bin/average_model.py",
        integers="divides them",
        average_name="avg_{n}.pt",
    )
    weights_in_shards = True  # epoch_N.pt/ folders hold pytorch_model.bin

    def owns_name(self, name: str) -> bool:
        """``epoch_N.pt`` / ``step_N.pt``."""
        return bool(re.match(r"(epoch|step)_\d+\.pt", name))

    def rank(
        self,
        ckpts: list[Checkpoint],
        siblings: list[Checkpoint],
        files: dict[str, FileIndex],
        metric: str | None,
        mode: str | None,
        root: Path,
    ) -> tuple[Ranked, str]:
        """``loss_dict.loss`` (v3) or ``cv_loss`` (v2) of each ``epoch_N.yaml``, lowest N
        (wenet/bin/average_model.py ``--val_best``)."""
        name = metric or "loss"
        scores: Ranked = []
        for ckpt in ckpts:
            value = number(dig(ckpt.info, "loss_dict", name))
            if value is None:
                value = number(ckpt.info.get("cv_loss" if name == "loss" else name))
            if value is not None:
                scores.append((Path(ckpt.path), value))
        lower = lower_is_better(name, mode)
        return rank(scores, lower), f"cv {name} (WeNet: {'lowest' if lower else 'highest'} first)"

    def curve_points(self, ckpt: Checkpoint, x: float | None) -> list[tuple[str, float, float]]:
        """``loss_dict.loss`` (3.x) or ``cv_loss`` (2.x), as ``cv_loss``."""
        info = ckpt.info
        loss_dict = info.get("loss_dict")
        loss = number(loss_dict.get("loss") if isinstance(loss_dict, dict) else info.get("cv_loss"))
        return [] if x is None or loss is None else [("cv_loss", x, loss)]

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


class WeNetFolder(WeNet):
    """``epoch_N.pt/`` folders holding ``pytorch_model.bin`` (WeNet + DeepSpeed, model_only)."""

    def claims(self, folder: Path, names: set[str]) -> bool:  # type: ignore[override]
        """A folder with a WeNet checkpoint name and consolidated weights inside."""
        return bool(_NAME.match(folder.name)) and any(
            n.startswith("pytorch_model") or n.endswith(".safetensors") for n in names
        )

    def describe(self, ckpt: Checkpoint, indexes: dict[str, FileIndex]) -> None:  # type: ignore[override]
        """Epoch and metrics from the sidecar YAML beside the folder."""
        WeNet().describe(ckpt, None)
