"""DeepSpeed checkpoint tag folders (deepspeed/runtime/engine.py ``save_checkpoint``).

``engine.save_checkpoint(save_dir, tag)`` writes ``save_dir/latest`` (the tag) and ``save_dir/<tag>/``:

* ``mp_rank_{mp:02d}_model_states.pt``: ``module`` (weights), ``dp_world_size``, ``ds_config``,
  ``global_steps``, ... (ZeRO 0/1/2); under ZeRO-3 one ``zero_pp_rank_{dp}_mp_rank_{mp:02d}_
  model_states.pt`` per data-parallel rank, with empty placeholders in ``module``;
* ``[bf16_]zero_pp_rank_{dp}_mp_rank_{mp:02d}_optim_states.pt``: one per data-parallel rank, the
  rank's fp32 master partition and its optimizer state.

The tag defaults to ``global_step{N}``; WeNet names it ``epoch_{N}.pt``. FunASR's
``trainer_ds.py`` names it ``ds-model.pt.ep{N}`` (``ds-model.pt.ep{N}.{step}`` mid-epoch; ``model.pt.ep{N}``
is accepted too) and saves the same state again as the tags ``ds-model.pt`` (latest)
and ``ds-model.pt.best``; its client state holds ``val_acc_step_or_eoch`` /
``val_loss_step_or_eoch`` keyed by tag name, which rank its tags as FunASR ranks its files.
"""

from __future__ import annotations

import re
from pathlib import Path

from ckpttui.layouts.base import (
    Layout,
    Ranked,
    as_int,
    dig,
    enum_value,
    number_in,
    plain,
    points,
    read_small_text,
    read_yaml,
)
from ckpttui.layouts.funasr import FunASR, validation_scores
from ckpttui.layouts.wenet import WeNet
from ckpttui.records import Checkpoint, FileIndex

_MODEL = re.compile(r"^(?:zero_pp_rank_(\d+)_)?mp_rank_(\d+)_model_states\.pt$")
_OPTIM = re.compile(r"^(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt$")


_FUNASR_TAG = re.compile(r"^(?:ds-)?model\.pt(?:\.|$)")
_FUNASR_EPOCH_TAG = re.compile(r"^(?:ds-)?model\.pt\.ep\d+(?:\.\d+)?$")
"""A FunASR tag that is a training save, not its ``ds-model.pt`` / ``.best`` copy."""

_TAG_NUMBER = r"(\d+)(?:\.pt)?$"
"""The number a tag ends with (``global_step20``, ``epoch_3.pt``)."""


class DeepSpeed(Layout):
    """A DeepSpeed tag folder (``global_step100/``, WeNet ``epoch_3.pt/``, FunASR ``ds-model.pt.ep3/``)."""

    name = "deepspeed"
    title = "DeepSpeed ZeRO"
    mergeable = True
    # zero_to_fp32's convert_zero_checkpoint_to_fp32_state_dict names its .bin output so
    consolidated = "pytorch_model.bin"

    def reclaim_removes(self, name: str) -> bool:
        """The ``*_optim_states.pt`` rank files (fp32 masters and optimizer state)."""
        return _OPTIM.match(name) is not None

    def unmerged_weights(self, folder: Path) -> Path | None:
        """Saved without ``*_optim_states.pt`` (ZeRO 0, or optimizer states left out): the weights
        are under ``module`` in ``mp_rank_00_model_states.pt``. ZeRO-3's per-rank model states
        hold only placeholders, so they are never the answer; a folder reclaim slimmed has them
        consolidated, which merge takes."""
        try:
            names = sorted(p.name for p in folder.iterdir())
        except OSError:
            return None
        if any(_OPTIM.match(n) for n in names) or self.consolidated in names:
            return None  # (reclaim's consolidated file: merge writes it to the output)
        whole = [n for n in names if (m := _MODEL.match(n)) and m.group(1) is None]
        return folder / whole[0] if whole else None

    def folder_advice(self, ckpt: Checkpoint) -> tuple[str, str, str, str] | None:
        """The rank files split the weights (merge them), reclaim consolidated them into one file
        (export it), or only model states were saved (stage 0: export that file)."""
        shards = [f for f in ckpt.files if _OPTIM.match(Path(f).name)]
        whole = self.unmerged_weights(Path(ckpt.path))
        done = ckpt.info.get("consolidated")
        if shards:
            return (
                "A ZeRO checkpoint folder: ",
                f"the fp32 weights are split over {len(shards)} optimizer shard(s), and loaders "
                "(torch.load, a recognize.py, from_pretrained) take one file, not a folder. ",
                "Press m",
                " to merge it into one file.",
            )
        if done:
            return (
                "Consolidated weights: ",
                f"reclaim slimmed this folder; its fp32 weights are one file, {done}, that "
                "loaders (torch.load, a recognize.py) take. Its optimizer shards are gone, so "
                "training cannot resume with its optimizer state. ",
                "Press e",
                " to export the weights (dtype, format), or average it with other tags.",
            )
        if whole is not None:
            return (
                "Model states only: ",
                "saved without optimizer shards, so there is nothing to merge; the weights are "
                f"under `module` in {whole.name}, and loaders take one file, not a folder. ",
                "Select that file and press e",
                " to export them as one file.",
            )
        return None

    def rank(
        self,
        ckpts: list[Checkpoint],
        siblings: list[Checkpoint],
        files: dict[str, FileIndex],
        metric: str | None,
        mode: str | None,
        root: Path,
    ) -> tuple[Ranked, str]:
        """WeNet's tags by WeNet's rule (the cv loss of each ``epoch_N.yaml`` or client state,
        lowest first), FunASR's by FunASR's (the val_acc / val_loss its client state records per
        tag name); plain DeepSpeed records no validation metric."""
        if ckpts and all(c.info.get("variant") == "wenet" for c in ckpts):
            return WeNet().rank(ckpts, siblings, files, metric, mode, root)
        if ckpts and all(c.info.get("variant") == "funasr" for c in ckpts):
            ranked, how = FunASR().rank(ckpts, siblings, files, metric, mode, root)
            if ranked:  # else no tag recorded a validation score under its own name
                return ranked, how
        return super().rank(ckpts, siblings, files, metric, mode, root)

    def is_candidate(self, ckpt: Checkpoint) -> bool:
        """FunASR's ``ds-model.pt`` and ``ds-model.pt.best`` tags are copies, never candidates."""
        if ckpt.info.get("variant") == "funasr":
            return not ckpt.info.get("symlink_to") and bool(
                _FUNASR_EPOCH_TAG.match(Path(ckpt.path).name)
            )
        return super().is_candidate(ckpt)

    def curve_points(self, ckpt: Checkpoint, x: float | None) -> list[tuple[str, float, float]]:
        """Client-state metrics (``cv_loss``, ``val_loss``, ``loss``) saved beside the model."""
        return points(ckpt.info, x, ("cv_loss", "val_loss", "loss"))

    def claims(self, folder: Path, names: set[str]) -> bool:
        """Folders with a ``*_model_states.pt`` or ``*_optim_states.pt`` file."""
        return any(_MODEL.match(n) or _OPTIM.match(n) for n in names)

    def describe(self, ckpt: Checkpoint, indexes: dict[str, FileIndex]) -> None:
        """Step/epoch from the tag, ZeRO stage and world size, and which rank files are missing."""
        folder = Path(ckpt.path)
        names = {p.name for p in folder.iterdir()}
        tag = folder.name
        ckpt.info["tag"] = tag
        ckpt.step = number_in(r"^global_step(\d+)$", tag)
        ckpt.epoch = number_in(r"^epoch_(\d+)(?:\.pt)?$", tag)
        if ckpt.epoch is None:
            ckpt.epoch = number_in(r"\.ep(\d+)", tag)
        if re.match(r"^(epoch|step)_\d+(\.pt)?$", tag):
            ckpt.info["variant"] = "wenet"
        elif _FUNASR_TAG.match(tag):
            ckpt.info["variant"] = "funasr"
        sidecar = folder.parent / (tag.removesuffix(".pt") + ".yaml")
        if ckpt.info.get("variant") == "wenet" and sidecar.is_file():
            # WeNet writes epoch_N.yaml beside the epoch_N.pt/ tag folder (wenet/utils/checkpoint.py).
            ckpt.files.append(str(sidecar))
            info, _ = read_yaml(sidecar)
            if isinstance(info, dict):
                for key in ("epoch", "step", "cv_loss", "lr"):
                    if key in info:
                        ckpt.info[key] = plain(info[key])
        latest = folder.parent / "latest"
        text = read_small_text(latest)
        if text is not None:
            named = text.strip()
            ckpt.info["latest"] = named == tag
            # `latest` is written last: a tag newer than the one it names is still being saved
            # (or its save died), and DeepSpeed's loader would load the older one. Only tags of
            # one shape compare: WeNet's step_5000.pt is not newer than its epoch_3.pt.
            mine, last = number_in(_TAG_NUMBER, tag), number_in(_TAG_NUMBER, named)
            same_kind = re.sub(r"\d+", "#", tag) == re.sub(r"\d+", "#", named)
            if same_kind and mine is not None and last is not None and mine > last:
                ckpt.complete = False
                ckpt.problems.append(
                    f"newer than `latest` ({named}): still being written, or its save did not finish"
                )

        model_files = sorted(n for n in names if _MODEL.match(n))
        optim_files = sorted(n for n in names if _OPTIM.match(n))
        states = None
        for name in model_files:
            idx = indexes.get(str(folder / name))
            if idx is not None and idx.error is None and isinstance(idx.data, dict):
                states = idx.data
                break
        dp = mp = stage = None
        if states is not None:
            dp = as_int(states.get("dp_world_size"))
            mp = as_int(states.get("mp_world_size")) or 1
            stage = as_int(dig(states, "ds_config", "zero_optimization", "stage"))
            ckpt.step = as_int(states.get("global_steps")) if ckpt.step is None else ckpt.step
            for key in (
                "global_steps",
                "global_samples",
                "skipped_steps",
                "ds_version",
                "dp_world_size",
                "mp_world_size",
            ):
                if key in states and isinstance(states[key], (int, float, str)):
                    ckpt.info[key] = states[key]
            for key in ("epoch", "step", "cv_loss", "val_loss", "loss", "lr"):
                value = states.get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    ckpt.info.setdefault(key, value)
            if ckpt.epoch is None:
                ckpt.epoch = as_int(states.get("epoch"))
            if ckpt.info.get("variant") == "funasr":
                ckpt.info.update(validation_scores(states))
                kind = states.get("avg_keep_nbest_models_type")
                if isinstance(kind, str):
                    ckpt.info["avg_keep_nbest_models_type"] = kind
        if stage is None and states is not None and "ds_config" in states:
            stage = 0 if dig(states, "ds_config", "zero_optimization") is None else None
        if stage is None:
            for name in optim_files:
                idx = indexes.get(str(folder / name))
                if idx is not None and isinstance(idx.data, dict):
                    stage = enum_value(dig(idx.data, "optimizer_state_dict", "zero_stage"))
                    if stage is not None:
                        break
        if stage is None:
            stage = (
                3
                if any(m.startswith("zero_pp_rank") for m in model_files)
                else (1 if optim_files else 0)
            )
        ckpt.info["zero_stage"] = stage
        if any(n.startswith("bf16_") for n in optim_files):
            ckpt.info["bf16_optimizer"] = True
        if not model_files:
            ckpt.complete = False
            ckpt.problems.append("no mp_rank_*_model_states.pt file: model states missing")
        if dp is None:
            ranks = {int(_OPTIM.match(n).group(1)) for n in optim_files}  # type: ignore[union-attr]
            dp = max(ranks) + 1 if ranks else 1
            if states is None and model_files:
                ckpt.problems.append(
                    "model states could not be read; world size guessed from rank files"
                )
        ckpt.info["world_size"] = dp * (mp or 1)
        missing = []
        prefix = "bf16_" if any(n.startswith("bf16_") for n in optim_files) else ""
        for m in range(mp or 1):
            if stage == 3:
                missing += [
                    f"zero_pp_rank_{r}_mp_rank_{m:02d}_model_states.pt"
                    for r in range(dp)
                    if f"zero_pp_rank_{r}_mp_rank_{m:02d}_model_states.pt" not in names
                ]
            elif model_files and f"mp_rank_{m:02d}_model_states.pt" not in names:
                missing.append(f"mp_rank_{m:02d}_model_states.pt")
            if self.consolidated in names and not optim_files:
                ckpt.info["consolidated"] = self.consolidated  # slimmed by reclaim
            elif stage and stage > 0 or optim_files:
                missing += [
                    f"{prefix}zero_pp_rank_{r}_mp_rank_{m:02d}_optim_states.pt"
                    for r in range(dp)
                    if f"{prefix}zero_pp_rank_{r}_mp_rank_{m:02d}_optim_states.pt" not in names
                ]
        if missing:
            ckpt.complete = False
            ckpt.problems.append(
                f"missing rank file(s) for data-parallel world size {dp}: "
                + ", ".join(missing[:4])
                + (" ..." if len(missing) > 4 else "")
            )
