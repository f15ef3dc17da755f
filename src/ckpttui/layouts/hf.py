"""Hugging Face folders: Trainer ``checkpoint-N/``, model folders (sharded + index), PEFT adapters.

Names follow transformers/trainer.py (``checkpoint-{global_step}``, ``tmp-checkpoint-*`` while
saving, ``trainer_state.json``, ``optimizer.pt``, ``scheduler.pt``, ``rng_state.pth``), and
transformers/modeling_utils.py ``save_pretrained`` (``model.safetensors``,
``model-00001-of-00002.safetensors`` + ``model.safetensors.index.json``, ``pytorch_model.bin``).
"""

from __future__ import annotations

import re
from pathlib import Path

from ckpttui.layouts.base import (
    Layout,
    Ranked,
    as_int,
    check_index,
    number,
    number_in,
    plain,
    rank,
    read_json,
)
from ckpttui.records import Category, Checkpoint, FileIndex

_WEIGHTS = re.compile(
    r"^(model|pytorch_model|adapter_model|diffusion_pytorch_model)"
    r"(-\d{5}-of-\d{5})?\.(safetensors|bin)$"
)
_INDEXES = (
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
    "diffusion_pytorch_model.safetensors.index.json",
)


def _weights_problems(folder: Path, names: set[str], ckpt: Checkpoint) -> None:
    """Incomplete when there is no weights file, or an index names a missing shard."""
    for index in _INDEXES:
        if index in names:
            check_index(folder, index, ckpt)
            return
    if any(_WEIGHTS.match(n) for n in names):
        return
    if any(n.startswith("global_step") for n in names):
        return  # Trainer + DeepSpeed: the weights are in the nested ZeRO folder
    if any((folder / n / "adapter_config.json").is_file() for n in names):
        return  # adapters' AdapterTrainer: only the adapter folder (adapter_config.json + weights)
    ckpt.complete = False
    ckpt.problems.append("no model weights file (model.safetensors / pytorch_model.bin)")


class _HFFolder(Layout):
    """What the HF folders share: weights files named by transformers, read as shards."""

    weights_in_shards = True

    def file_role(self, name: str) -> Category | None:
        """``model.safetensors``, ``pytorch_model.bin`` and their shards hold the weights."""
        lower = name.lower()
        if lower.endswith(".safetensors") or re.match(
            r"(pytorch_model|adapter_model|model)(-\d+-of-\d+)?\.(bin|pt)$", lower
        ):
            return Category.WEIGHTS
        return None


class HFTrainer(_HFFolder):
    """A ``checkpoint-N/`` folder written by ``transformers.Trainer``."""

    name = "hf-trainer"
    title = "HF Trainer"
    training = True
    candidate = re.compile(r"^checkpoint-\d+$")
    absorbs = ("deepspeed",)  # Trainer + DeepSpeed: the ZeRO tag folder inside checkpoint-N/
    steps_axis = True

    def rank(
        self,
        ckpts: list[Checkpoint],
        siblings: list[Checkpoint],
        files: dict[str, FileIndex],
        metric: str | None,
        mode: str | None,
        root: Path,
    ) -> tuple[Ranked, str]:
        """``eval_<metric>`` logged at each checkpoint's step in ``log_history``; higher is better
        unless the name ends in ``loss`` (``TrainingArguments.greater_is_better``)."""
        name = metric or "loss"
        name = name if name.startswith("eval_") else f"eval_{name}"
        at_step: dict[int, float] = {}
        for ckpt in ckpts:
            for entry in ckpt.info.get("log_history") or []:
                if isinstance(entry, dict) and isinstance(entry.get("step"), int):
                    value = number(entry.get(name))
                    if value is not None:
                        at_step[entry["step"]] = value
        scores = [(Path(c.path), at_step[c.step]) for c in ckpts if c.step in at_step]
        lower = mode == "min" if mode is not None else name.endswith("loss")
        return rank(scores, lower), f"{name} ({'lowest' if lower else 'highest'} first)"

    def curve_points(self, ckpt: Checkpoint, x: float | None) -> list[tuple[str, float, float]]:
        """``loss`` and ``eval_loss`` of every ``log_history`` entry, at its step."""
        out = []
        for entry in ckpt.info.get("log_history") or []:
            if isinstance(entry, dict) and (step := number(entry.get("step"))) is not None:
                out += [
                    (k, step, v)
                    for k in ("loss", "eval_loss")
                    if (v := number(entry.get(k))) is not None
                ]
        return out

    def claims(self, folder: Path, names: set[str]) -> bool:
        """``checkpoint-N`` / ``tmp-checkpoint-N`` folders, or trainer state beside optimizer state."""
        return bool(re.fullmatch(r"(tmp-)?checkpoint-\d+", folder.name)) or (
            "trainer_state.json" in names and bool({"optimizer.pt", "scheduler.pt"} & names)
        )

    def describe(self, ckpt: Checkpoint, indexes: dict[str, FileIndex]) -> None:
        """Step from the name and trainer_state.json; best metric; completeness."""
        folder = Path(ckpt.path)
        names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
        ckpt.step = number_in(r"checkpoint-(\d+)$", folder.name)
        if folder.name.startswith("tmp-checkpoint-"):
            ckpt.complete = False
            ckpt.problems.append(
                "still being written (tmp-checkpoint-*: Trainer renames it when the save finishes)"
            )
        state, err = read_json(folder / "trainer_state.json")
        if err:
            ckpt.complete = False
            ckpt.problems.append(err)
        elif isinstance(state, dict):
            ckpt.step = as_int(state.get("global_step")) or ckpt.step
            epoch = state.get("epoch")
            if isinstance(epoch, (int, float)):
                ckpt.epoch = int(epoch)
                ckpt.info["epoch_float"] = epoch
            for key in (
                "best_metric",
                "best_model_checkpoint",
                "best_global_step",
                "max_steps",
                "num_train_epochs",
                "train_batch_size",
            ):
                if state.get(key) is not None:
                    ckpt.info[key] = plain(state[key])
            history = state.get("log_history")
            if isinstance(history, list):
                ckpt.info["log_history"] = plain(history[-50:])
        _weights_problems(folder, names, ckpt)


class HFModel(_HFFolder):
    """A model folder from ``save_pretrained`` (or zero_to_fp32): weights, or shards + index."""

    name = "hf-model"
    title = "HF model"
    mergeable = True  # shards + index join into one file

    def claims(self, folder: Path, names: set[str]) -> bool:
        """A folder with an HF weights index, or config.json beside a weights file."""
        if any(n in names for n in _INDEXES):
            return True
        return "config.json" in names and any(_WEIGHTS.match(n) for n in names)

    def describe(self, ckpt: Checkpoint, indexes: dict[str, FileIndex]) -> None:
        """Architecture from config.json; completeness of shards."""
        folder = Path(ckpt.path)
        names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
        if "config.json" in names:
            config, err = read_json(folder / "config.json")
            if isinstance(config, dict):
                for key in ("architectures", "model_type", "torch_dtype", "dtype"):
                    if key in config:
                        ckpt.info[key] = plain(config[key])
            elif err:
                ckpt.problems.append(err)
        _weights_problems(folder, names, ckpt)


class PeftAdapter(_HFFolder):
    """An adapter folder: PEFT's ``adapter_model.safetensors`` or ``adapters``' ``pytorch_adapter.bin``."""

    name = "peft-adapter"
    title = "PEFT/adapters"
    weights_in_shards = False

    def file_role(self, name: str) -> Category | None:
        """Adapter weights files (``pytorch_adapter.bin``, ``adapter_model.*``) are weights."""
        if re.match(r"pytorch_(adapter|model_head)\.bin$", name.lower()):
            return Category.WEIGHTS
        return super().file_role(name)

    def claims(self, folder: Path, names: set[str]) -> bool:
        """Folders holding ``adapter_config.json`` (PEFT, or the ``adapters`` library)."""
        return "adapter_config.json" in names

    def describe(self, ckpt: Checkpoint, indexes: dict[str, FileIndex]) -> None:
        """Adapter type, rank and base model from adapter_config.json."""
        folder = Path(ckpt.path)
        config, err = read_json(folder / "adapter_config.json")
        if isinstance(config, dict):
            for key in (
                "peft_type",
                "r",
                "lora_alpha",
                "target_modules",
                "base_model_name_or_path",
                "task_type",
            ):
                if key in config:
                    ckpt.info[key] = plain(config[key])
        elif err:
            ckpt.problems.append(err)
        names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
        if names & {"pytorch_adapter.bin", "adapter.safetensors"}:
            # adapters/loading.py AdapterLoader.save (adapter-transformers' successor)
            ckpt.info["library"] = "adapters"
            inner = config.get("config") if isinstance(config, dict) else None
            if isinstance(inner, dict):
                # BnConfig (bottleneck adapters) has no ``architecture``; its ``reduction_factor``
                # is the bottleneck's hidden-size divisor, not a type (adapters/configuration).
                kind = inner.get("architecture") or (
                    "bottleneck" if "reduction_factor" in inner else None
                )
                if kind is not None:
                    ckpt.info["adapter_type"] = plain(kind)
                for key in ("reduction_factor", "r", "alpha", "non_linearity"):
                    if key in inner:
                        ckpt.info[key] = plain(inner[key])
            return
        if not any(n.startswith("adapter_model.") for n in names):
            ckpt.complete = False
            ckpt.problems.append("adapter_config.json without adapter_model.safetensors/.bin")
