"""SpeechBrain checkpoint folders (speechbrain/utils/checkpoints.py ``Checkpointer``).

``save_checkpoint`` makes ``CKPT+<YYYY-MM-DD+HH-MM-SS+NN>/``, writes ``CKPT.yaml`` first
(``end-of-epoch``, ``unixtime`` and the metrics passed as ``meta``), then one ``<name>.ckpt`` per
recoverable (``torch.save`` of a state_dict for modules and optimizers; ``EpochCounter`` writes its
epoch as text; ``Brain`` writes YAML). Because CKPT.yaml comes first, a crash mid-save leaves a
folder that looks valid: a recoverable its sibling folders have and it lacks marks it incomplete.
"""

from __future__ import annotations

from pathlib import Path

from ckpttui.layouts.base import (
    WRITTEN_BY,
    Layout,
    LoaderContract,
    Ranked,
    RankError,
    as_int,
    lower_is_better,
    number,
    plain,
    rank,
    read_small_text,
    read_yaml,
)
from ckpttui.records import Category, Checkpoint, FileIndex

# Recoverables that are training state, by the stem of their file name.
_TRAINING_STATE = ("sched", "annealing", "noam", "counter", "brain", "dataloader", "scaler")
_NOT_METRICS = ("unixtime", "end-of-epoch", "epoch")


def _written_by_ckpttui(folder: Path) -> bool:
    try:
        return WRITTEN_BY in (read_small_text(folder / "CKPT.yaml") or "")
    except (OSError, UnicodeDecodeError):
        return False


class SpeechBrain(Layout):
    """A ``CKPT+...`` folder."""

    name = "speechbrain"
    title = "SpeechBrain"
    training = True
    recoverables = True
    nested_weights = True
    # Each recoverable's .ckpt is a bare state dict that Checkpointer.recover_if_possible and
    # Pretrainer load by file name; speechbrain.utils.checkpoints.average_state_dicts divides
    # integer tensors; a CKPT+ output takes CKPT.yaml from the newest input.
    contract = LoaderContract(
        flat=True,
        script="average_checkpoints",
        integers="divides them",
        average_name="CKPT+avg{n}",
        folder_prefix="CKPT+",
        sidecar="CKPT.yaml",
    )

    def file_role(self, name: str) -> Category | None:
        """Schedulers, counters, ``brain.ckpt`` and dataloader state are training state."""
        stem = name.lower().rsplit(".", 1)[0]
        return Category.OTHER if any(k in stem for k in _TRAINING_STATE) else None

    def is_candidate(self, ckpt: Checkpoint) -> bool:
        """Every ``CKPT+`` folder but links (the Checkpointer names them all alike)."""
        return not ckpt.info.get("symlink_to") and not Path(ckpt.path).name.startswith("CKPT+avg")

    def progress(self, ckpt: Checkpoint) -> float | None:
        """The save time (``unixtime`` in CKPT.yaml), as ``find_checkpoints`` orders them."""
        meta = ckpt.info.get("meta")
        return number(meta.get("unixtime")) if isinstance(meta, dict) else None

    def curve_points(self, ckpt: Checkpoint, x: float | None) -> list[tuple[str, float, float]]:
        """Every numeric ``CKPT.yaml`` meta value (WER, ACC, loss...)."""
        meta = ckpt.info.get("meta")
        if x is None or not isinstance(meta, dict):
            return []
        return [
            (str(k), x, v)
            for k, value in meta.items()
            if k not in _NOT_METRICS and (v := number(value)) is not None
        ]

    def rank(
        self,
        ckpts: list[Checkpoint],
        siblings: list[Checkpoint],
        files: dict[str, FileIndex],
        metric: str | None,
        mode: str | None,
        root: Path,
    ) -> tuple[Ranked, str]:
        """One ``CKPT.yaml`` meta key, lowest or highest N (``Checkpointer.find_checkpoints``
        ``min_key`` / ``max_key``); the key must be named when several are recorded."""
        keys: set[str] = set()
        for ckpt in ckpts:
            keys |= {k for k, _, _ in self.curve_points(ckpt, 0.0)}
        if metric is None:
            if len(keys) != 1:
                raise RankError(
                    f"{root}: CKPT.yaml records {', '.join(sorted(keys)) or 'no metric'}; "
                    "name the metric to rank by (--metric)"
                )
            metric = next(iter(keys))
        scores = [
            (Path(c.path), float(v))
            for c in ckpts
            if (v := number((c.info.get("meta") or {}).get(metric))) is not None
        ]
        lower = lower_is_better(metric, mode)
        return rank(
            scores, lower
        ), f"{metric} ({'min' if lower else 'max'}_key: {'lowest' if lower else 'highest'} first)"

    def claims(self, folder: Path, names: set[str]) -> bool:
        """Folders named ``CKPT+...`` or holding ``CKPT.yaml``."""
        return folder.name.startswith("CKPT+") or "CKPT.yaml" in names

    def describe(self, ckpt: Checkpoint, indexes: dict[str, FileIndex]) -> None:
        """Metrics and end-of-epoch from CKPT.yaml, epoch from counter.ckpt."""
        folder = Path(ckpt.path)
        meta, err = read_yaml(folder / "CKPT.yaml")
        if err:
            ckpt.complete = False
            ckpt.problems.append(err)
        elif isinstance(meta, dict):
            ckpt.info["meta"] = plain(meta)
            ckpt.info["end_of_epoch"] = bool(meta.get("end-of-epoch"))
            ckpt.epoch = as_int(meta.get("epoch"))
        for counter in ("counter.ckpt", "epoch_counter.ckpt"):
            text = (read_small_text(folder / counter) or "").strip()
            if as_int(text) is not None:
                ckpt.epoch = as_int(text)
                break
        mine = {p.name for p in folder.iterdir() if p.suffix == ".ckpt"}
        expected: set[str] = set()
        for sibling in folder.parent.iterdir():
            if sibling != folder and sibling.name.startswith("CKPT+") and sibling.is_dir():
                expected |= {p.name for p in sibling.iterdir() if p.suffix == ".ckpt"}
        missing = sorted(expected - mine)
        if (
            missing
            and _written_by_ckpttui(folder)
            and all("optim" in m or self.file_role(m) is Category.OTHER for m in missing)
        ):
            # a weights-only folder (an export, a reclaim), not a broken save
            ckpt.info["optimizer_left_out"] = True
            missing = []
        if missing:
            ckpt.complete = False
            ckpt.problems.append(
                "missing " + ", ".join(missing[:4]) + " (present in the other "
                "CKPT+ folders: the save was interrupted?)"
            )
        brain, _ = read_yaml(folder / "brain.ckpt")
        if isinstance(brain, dict):
            ckpt.step = as_int(brain.get("step")) or as_int(brain.get("optimizer_step"))
            if "avg_train_loss" in brain:
                ckpt.info["avg_train_loss"] = plain(brain["avg_train_loss"])
