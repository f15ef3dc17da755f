"""Hugging Face folders: Trainer ``checkpoint-N/``, model folders (sharded + index), PEFT adapters.

Names follow transformers/trainer.py (``checkpoint-{global_step}``, ``tmp-checkpoint-*`` while
saving, ``trainer_state.json``, ``optimizer.pt``, ``scheduler.pt``, ``rng_state.pth``), and
transformers/modeling_utils.py ``save_pretrained`` (``model.safetensors``,
``model-00001-of-00002.safetensors`` + ``model.safetensors.index.json``, ``pytorch_model.bin``).
"""

from __future__ import annotations

import re
from pathlib import Path

from ckpttui.layouts.base import as_int, check_index, number_in, plain, read_json
from ckpttui.records import Checkpoint, FileIndex

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
    ckpt.complete = False
    ckpt.problems.append("no model weights file (model.safetensors / pytorch_model.bin)")


class HFTrainer:
    """A ``checkpoint-N/`` folder written by ``transformers.Trainer``."""

    name = "hf-trainer"

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


class HFModel:
    """A model folder from ``save_pretrained`` (or zero_to_fp32): weights, or shards + index."""

    name = "hf-model"

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


class PeftAdapter:
    """An adapter folder: PEFT's ``adapter_model.safetensors`` or ``adapters``' ``pytorch_adapter.bin``."""

    name = "peft-adapter"

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
            if isinstance(config, dict) and isinstance(config.get("config"), dict):
                ckpt.info["adapter_type"] = plain(
                    config["config"].get("architecture") or config["config"].get("reduction_factor")
                )
            return
        if not any(n.startswith("adapter_model.") for n in names):
            ckpt.complete = False
            ckpt.problems.append("adapter_config.json without adapter_model.safetensors/.bin")
