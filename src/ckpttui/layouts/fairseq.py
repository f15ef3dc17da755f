"""fairseq checkpoints (fairseq/checkpoint_utils.py ``save_checkpoint``, fairseq/trainer.py
``state_dict``): ``checkpoint{epoch}.pt``, ``checkpoint_{epoch}_{updates}.pt``, ``checkpoint_best.pt``,
``checkpoint_last.pt``, ``checkpoint.best_{metric}_{value}.pt``. The dict holds ``args``
(an ``argparse.Namespace``, or None) and/or ``cfg``, ``model``, ``criterion``, ``optimizer_history``
(``num_updates`` in its last entry), ``task_state``, ``extra_state`` (``train_iterator.epoch``,
``best``...) and ``last_optimizer_state``.
"""

from __future__ import annotations

from pathlib import Path

from ckpttui.layouts.base import as_int, dig, number_in, plain
from ckpttui.records import Checkpoint, FileIndex


class Fairseq:
    """A fairseq training checkpoint."""

    name = "fairseq"

    def claims(self, path: Path, index: FileIndex | None) -> bool:
        """Dicts with ``model`` and ``args``/``cfg`` and fairseq's training keys."""
        data = index.data if index else None
        if not isinstance(data, dict) or "model" not in data:
            return False
        return ("args" in data or "cfg" in data) and bool(
            {"optimizer_history", "extra_state", "last_optimizer_state"} & set(data)
        )

    def describe(self, ckpt: Checkpoint, index: FileIndex | None) -> None:
        """Epoch from extra_state, updates from optimizer_history, best metric where saved."""
        data = index.data if index else None
        name = Path(ckpt.path).name
        ckpt.epoch = number_in(r"^checkpoint_?(\d+)(?:_\d+)?\.pt$", name)
        ckpt.step = number_in(r"^checkpoint_\d+_(\d+)\.pt$", name)
        if not isinstance(data, dict):
            return
        # The iterator has already moved on at the end of an epoch: (epoch + 1, 0 iterations).
        epoch = as_int(dig(data, "extra_state", "train_iterator", "epoch"))
        if (
            epoch is not None
            and dig(data, "extra_state", "train_iterator", "iterations_in_epoch") == 0
        ):
            epoch -= 1
        if ckpt.epoch is None:
            ckpt.epoch = epoch
        history = data.get("optimizer_history")
        if isinstance(history, list) and history and isinstance(history[-1], dict):
            last = history[-1]
            ckpt.step = as_int(last.get("num_updates")) if ckpt.step is None else ckpt.step
            for key in ("criterion_name", "optimizer_name", "num_updates"):
                if key in last:
                    ckpt.info[key] = plain(last[key])
        extra = data.get("extra_state")
        if isinstance(extra, dict):
            for key in ("best", "val_loss", "previous_training_time"):
                if key in extra:
                    ckpt.info[key] = plain(extra[key])
        ckpt.info["config"] = "cfg" if data.get("cfg") is not None else "args"
        if data.get("last_optimizer_state") is None:
            ckpt.info["weights_only"] = True
