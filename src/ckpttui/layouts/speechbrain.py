"""SpeechBrain checkpoint folders (speechbrain/utils/checkpoints.py ``Checkpointer``).

``save_checkpoint`` makes ``CKPT+<YYYY-MM-DD+HH-MM-SS+NN>/``, writes ``CKPT.yaml`` first
(``end-of-epoch``, ``unixtime`` and the metrics passed as ``meta``), then one ``<name>.ckpt`` per
recoverable (``torch.save`` of a state_dict for modules and optimizers; ``EpochCounter`` writes its
epoch as text; ``Brain`` writes YAML). Because CKPT.yaml comes first, a crash mid-save leaves a
folder that looks valid: a recoverable its sibling folders have and it lacks marks it incomplete.
"""

from __future__ import annotations

from pathlib import Path

from ckpttui.layouts.base import as_int, plain, read_small_text, read_yaml
from ckpttui.records import Checkpoint, FileIndex


class SpeechBrain:
    """A ``CKPT+...`` folder."""

    name = "speechbrain"

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
