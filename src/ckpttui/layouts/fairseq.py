"""fairseq checkpoints (fairseq/checkpoint_utils.py ``save_checkpoint``, fairseq/trainer.py
``state_dict``): ``checkpoint{epoch}.pt``, ``checkpoint_{epoch}_{updates}.pt``, ``checkpoint_best.pt``,
``checkpoint_last.pt``, ``checkpoint.best_{metric}_{value}.pt``. The dict holds ``args``
(an ``argparse.Namespace``, or None) and/or ``cfg``, ``model``, ``criterion``, ``optimizer_history``
(``num_updates`` in its last entry), ``task_state``, ``extra_state`` (``train_iterator.epoch``,
``best``...) and ``last_optimizer_state``.
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
    number,
    number_in,
    plain,
    points,
    rank,
)
from ckpttui.records import Checkpoint, FileIndex

_BEST = re.compile(r"^checkpoint\.best_(.+?)_(\d+\.?\d*)\.pt$")
_EPOCH = re.compile(r"^checkpoint\d+\.pt$")


class Fairseq(Layout):
    """A fairseq training checkpoint."""

    name = "fairseq"
    title = "fairseq"
    training = True
    candidate = re.compile(r"^checkpoint(\d+|_\d+_\d+)\.pt$")
    # checkpoint_utils._upgrade_state_dict indexes optimizer_history[-1] and
    # extra_state["train_iterator"]; load_model_ensemble_and_task reads args/cfg and model;
    # the trainer reads last_optimizer_state with .get, so a slim file may leave it out.
    # extra_state.metrics holds meters whose state dicts carry tensors (val, sum): kept.
    # scripts/average_checkpoints.py copies the first input's dict and floor-divides integers.
    contract = LoaderContract(
        keep=(
            "args",
            "cfg",
            "model",
            "criterion",
            "optimizer_history",
            "task_state",
            "extra_state",
        ),
        metadata_from="first",
        copies_metadata=True,
        script="scripts/average_checkpoints.py",
        integers="floor-divides them",
        average_name="checkpoint.avg{n}.pt",
    )

    def owns_name(self, name: str) -> bool:
        """``checkpoint*`` names."""
        return name.startswith("checkpoint")

    def last_pool(self, ckpts: list[Checkpoint]) -> tuple[list[Checkpoint], list[str]]:
        """Epoch checkpoints when there are any: scripts/average_checkpoints.py takes epoch or
        update checkpoints, never both."""
        epochs = [c for c in ckpts if _EPOCH.match(Path(c.path).name)]
        if epochs and len(epochs) < len(ckpts):
            return epochs, [
                f"left out {len(ckpts) - len(epochs)} mid-epoch checkpoint_E_U.pt files"
            ]
        return ckpts, []

    def rank(
        self,
        ckpts: list[Checkpoint],
        siblings: list[Checkpoint],
        files: dict[str, FileIndex],
        metric: str | None,
        mode: str | None,
        root: Path,
    ) -> tuple[Ranked, str]:
        """The ``checkpoint.best_<metric>_<value>.pt`` files when kept (``keep_best_checkpoints``),
        else each checkpoint's ``extra_state.val_loss``; lower is better unless
        ``maximize_best_checkpoint_metric``."""
        folder = Path(ckpts[0].path).parent
        maximize = False
        for ckpt in ckpts:
            data = files.get(ckpt.path)
            flag = dig(data.data, "args", "maximize_best_checkpoint_metric") if data else None
            if flag is None and data is not None:
                flag = dig(data.data, "cfg", "checkpoint", "maximize_best_checkpoint_metric")
            maximize = bool(flag) if flag is not None else maximize
        lower = mode == "min" if mode is not None else not maximize
        first = "lowest" if lower else "highest"
        best_files = []
        for path in sorted(folder.iterdir()):
            m = _BEST.match(path.name)
            if m and (metric is None or m.group(1) == metric):
                best_files.append((path, float(m.group(2))))
        if best_files:
            return rank(best_files, lower), f"the value in checkpoint.best_* names ({first} first)"
        # A mid-epoch save repeats the last validation's val_loss unless it was validated
        # itself: rank epoch saves when there are any, as average_checkpoints.py never mixes.
        pool, _ = self.last_pool(ckpts)
        scores = [
            (Path(c.path), v) for c in pool if (v := number(c.info.get("val_loss"))) is not None
        ]
        return rank(scores, lower), f"extra_state val_loss ({first} first)"

    def curve_points(self, ckpt: Checkpoint, x: float | None) -> list[tuple[str, float, float]]:
        """``extra_state.val_loss``."""
        return points(ckpt.info, x, ("val_loss",))

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
