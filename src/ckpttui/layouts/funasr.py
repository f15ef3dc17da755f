"""FunASR checkpoints (funasr/train_utils/trainer.py ``save_checkpoint``).

``model.pt.ep{N}`` (``model.pt.ep{N}.{step}`` mid-epoch), ``model.pt`` (latest), ``model.pt.best``
and ``model.pt.avg{K}`` are ``torch.save`` of a dict: ``state_dict`` (weights), ``optimizer``,
``scheduler``, ``epoch``, ``step``, ``saved_ckpts``, ``val_acc_step_or_epoch``,
``val_loss_step_or_epoch``, ``best_step_or_epoch``... ``model.pt.avg{K}`` holds ``state_dict`` only
(funasr/train_utils/average_nbest_models.py). Mid-epoch names count epochs from 0
(``model.pt.ep0.5000`` precedes ``model.pt.ep1``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ckpttui.layouts.base import (
    Layout,
    LoaderContract,
    Ranked,
    RankError,
    as_int,
    number,
    plain,
    rank,
)
from ckpttui.records import Checkpoint, FileIndex

_NAME = re.compile(r"^model\.pt(\.ep(\d+)(\.(\d+))?|\.best|\.avg(\d+))?$")
# FunASR spelled two keys "..._step_or_eoch" from 2024-03 to 2024-09 (2025-01 in trainer_ds.py).
_KEYS = {
    "saved_ckpts",
    "val_acc_step_or_eoch",
    "val_loss_step_or_eoch",
    "val_acc_step_or_epoch",
    "val_loss_step_or_epoch",
    "best_step_or_epoch",
    "avg_keep_nbest_models_type",
    "step_in_epoch",
    "data_split_i",
}


class FunASR(Layout):
    """``model.pt.epN`` and friends."""

    name = "funasr"
    title = "FunASR"
    training = True
    candidate = re.compile(r"^model\.pt\.ep\d+(\.\d+)?$")
    # average_nbest_models.py saves {"state_dict": avg} and sums integer tensors.
    contract = LoaderContract(
        keep=("state_dict",),
        script="average_nbest_models.py",
        integers="sums them",
        average_name="model.pt.avg{n}",
    )

    def owns_name(self, name: str) -> bool:
        """``model.pt*`` names."""
        return name.startswith("model.pt")

    def progress(self, ckpt: Checkpoint) -> float | None:
        """``batch_total``: mid-epoch names count epochs from 0, so neither epoch nor step orders them."""
        return number(ckpt.info.get("batch_total"))

    def curve_x(self, ckpt: Checkpoint, by_epoch: bool) -> float | None:
        """Mid-epoch saves (``model.pt.ep1.3``) sit half-way through their (0-based) epoch."""
        x = super().curve_x(ckpt, by_epoch)
        if by_epoch and x is not None and ckpt.step is not None:
            x += 0.5
        return x

    def curve_points(self, ckpt: Checkpoint, x: float | None) -> list[tuple[str, float, float]]:
        """``val_acc`` / ``val_loss`` per validated name (``model.pt.ep2``, ``ep1.3``)."""
        out = []
        for metric in ("val_acc", "val_loss"):
            values = ckpt.info.get(metric)
            if isinstance(values, dict):
                for name, value in values.items():
                    m = re.match(r"(?:model\.pt\.)?ep(\d+)(?:\.(\d+))?$", str(name))
                    if m and (v := number(value)) is not None:
                        out.append((metric, float(m.group(1)) + (0.5 if m.group(2) else 0.0), v))
        return out

    def rank(
        self,
        ckpts: list[Checkpoint],
        siblings: list[Checkpoint],
        files: dict[str, FileIndex],
        metric: str | None,
        mode: str | None,
        root: Path,
    ) -> tuple[Ranked, str]:
        """``val_acc_step_or_epoch`` / ``val_loss_step_or_epoch`` (kind from
        ``avg_keep_nbest_models_type``), sorted by value descending; acc takes the first N, loss
        the last N (funasr/train_utils/average_nbest_models.py ``_get_checkpoint_paths``)."""
        ordered = sorted(siblings, key=self.order)
        newest = ckpts[-1]
        for ckpt in ordered:  # model.pt (the latest save) holds every validated name
            if self.order(ckpt) > self.order(newest):
                newest = ckpt
        kind = metric or str(newest.info.get("avg_keep_nbest_models_type") or "acc")
        kind = kind.removeprefix("val_")
        if kind not in ("acc", "loss"):
            raise RankError(f"{root}: FunASR records val_acc and val_loss, not {metric!r}")
        values: dict[str, Any] = {}
        for ckpt in ordered:
            recorded = ckpt.info.get(f"val_{kind}")
            if isinstance(recorded, dict):
                values.update(recorded)
        folder = Path(ckpts[0].path).parent
        scores = [
            (folder / name, float(v))
            for name, v in values.items()
            if number(v) is not None and (folder / name).exists()  # a file, or a DeepSpeed tag
        ]
        if mode is None:
            ranked = sorted(scores, key=lambda item: item[1], reverse=True)
            if kind == "loss":
                ranked.reverse()
            return ranked, f"val_{kind} (FunASR: {'highest' if kind == 'acc' else 'lowest'} first)"
        return rank(scores, mode == "min"), f"val_{kind} ({mode})"

    def claims(self, path: Path, index: FileIndex | None) -> bool:
        """FunASR names (``model.pt`` only with FunASR keys or ``model.pt.ep*`` siblings)."""
        m = _NAME.match(path.name)
        if not m:
            return False
        data = index.data if index else None
        if m.group(1):
            return True
        if isinstance(data, dict) and _KEYS & set(map(str, data)):
            return True
        return any(p.name.startswith("model.pt.ep") for p in path.parent.iterdir())

    def describe(self, ckpt: Checkpoint, index: FileIndex | None) -> None:
        """Epoch and step from the name and the dict; validation metrics where recorded."""
        m = _NAME.match(Path(ckpt.path).name)
        if m and m.group(2):
            ckpt.epoch = int(m.group(2))
            ckpt.step = int(m.group(4)) if m.group(4) else None
        if m and m.group(5):
            ckpt.info["averaged"] = int(m.group(5))
        data: Any = index.data if index else None
        if isinstance(data, dict):
            if ckpt.epoch is None:
                ckpt.epoch = as_int(data.get("epoch"))
            if ckpt.step is None:
                ckpt.step = as_int(data.get("step"))
            for key in (
                "epoch",
                "step",
                "step_in_epoch",
                "best_step_or_epoch",
                "train_loss_avg",
                "train_acc_avg",
                "saved_ckpts",
                "avg_keep_nbest_models_type",
                "batch_total",
            ):
                if key in data and not _has_tensors(data[key]):
                    ckpt.info[key] = plain(data[key])
            ckpt.info.update(validation_scores(data))


def validation_scores(state: dict[Any, Any]) -> dict[str, Any]:
    """``val_acc`` / ``val_loss`` by validated name, from a FunASR state dict or DeepSpeed client
    state (``val_acc_step_or_epoch``, spelled ``..._eoch`` for a while: see `_KEYS`)."""
    out = {}
    for metric in ("acc", "loss"):
        for spelling in ("epoch", "eoch"):
            value = state.get(f"val_{metric}_step_or_{spelling}")
            if isinstance(value, dict):
                out[f"val_{metric}"] = plain(value)
    return out


def _has_tensors(value: Any) -> bool:
    from ckpttui.formats.unpickler import TensorRef

    if isinstance(value, TensorRef):
        return True
    if isinstance(value, dict):
        return any(_has_tensors(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_tensors(v) for v in value)
    return False
