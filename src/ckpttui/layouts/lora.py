"""LoRA adapters as their libraries save them: which base tensor each pair of matrices updates.

PEFT (peft 0.21.2: ``utils/save_and_load.py`` ``get_peft_model_state_dict``, ``tuners/lora``)
saves ``adapter_config.json`` (a ``LoraConfig``) and ``adapter_model.safetensors`` (or ``.bin``)
whose keys start with ``base_model.model.`` and have the adapter name removed::

    <module>.lora_A.weight  (r, in[, *kernel])   <module>.lora_B.weight  (out, r[, 1, ...])
    <module>.lora_embedding_A  (r, num)          <module>.lora_embedding_B  (dim, r)
    <module>.lora_B.bias        with lora_bias=True: added to the base bias times the scaling
    <module>.base_layer.weight  the whole base tensor, saved when an embedding was resized
    <module>.<param>            a ``modules_to_save`` module's trained copy

    <module>.lora_magnitude_vector  DoRA's m (linear layers; ``variants.py`` DoraLinearVariant)

The delta is ``transpose(B @ A, fan_in_fan_out) * scaling`` (``(B @ A).T`` for embeddings), with
``scaling = lora_alpha / r`` (``lora_alpha / sqrt(r)`` with ``use_rslora``); r and alpha come from
``rank_pattern`` / ``alpha_pattern`` when a pattern matches the module name as
``re.match(rf"(.*\\.)?({pattern})$", name)`` does (``peft.utils.other.get_pattern_key``: the first
matching pattern in the dict's order).

The ``adapters`` library (adapters 1.3.0: ``methods/lora.py``, ``loading.py``) saves
``adapter_config.json`` (``{"config": {"architecture": "lora", "r", "alpha", ...}, "name"}``) and
``pytorch_adapter.bin`` (or ``adapter.safetensors``) with keys
``<module>.loras.<name>.lora_A`` (r, in) and ``.lora_B`` (out, r); its merge
(``LoRALinear.merge_adapter``) is ``W + (B @ A) * alpha / r`` (``composition_mode="add"``;
``"scale"`` is (IA)^3, refused, as are DoRA, gating and VeRA).

No torch here: this module only reads names, shapes and the JSON config.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckpttui.formats import read_file
from ckpttui.layouts.base import read_json
from ckpttui.records import FileIndex

PEFT_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
ADAPTERS_WEIGHTS = ("adapter.safetensors", "pytorch_adapter.bin")
PEFT_PREFIX = "base_model.model."

# LoraConfig fields that turn plain LoRA into a variant this merge does not reproduce.
_VARIANTS = {
    "use_qalora": "QALoRA (use_qalora)",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
    "arrow_config": "Arrow routing (arrow_config)",
    "use_bdlora": "BD-LoRA (use_bdlora)",
    "kasa_config": "KaSA (kasa_config)",
    "monteclora_config": "MonteCLoRA (monteclora_config)",
    "layer_replication": "layer replication (layer_replication)",
    "target_parameters": "LoRA on bare parameters (target_parameters)",
    "trainable_token_indices": "trainable tokens (trainable_token_indices)",
    "megatron_config": "Megatron parallel layers (megatron_config)",
}
# Initialisations that also rewrite the base weights while training starts: merging into the
# original base then gives what PEFT gives, which is not the trained model.
_RESIDUAL_INITS = ("pissa", "olora", "corda", "loftq", "eva")

_PEFT_AB = re.compile(r"^(.*)\.lora_(A|B)(?:\.([^.]+))?\.(weight|bias)$")
_PEFT_EMB = re.compile(r"^(.*)\.lora_embedding_(A|B)(?:\.([^.]+))?$")
_PEFT_MAG = re.compile(r"^(.*)\.lora_magnitude_vector(?:\.([^.]+))?(?:\.weight)?$")
_ADAPTERS_AB = re.compile(r"^(.*)\.loras\.([^.]+)\.lora_(A|B)$")


class AdapterError(Exception):
    """The adapter folder cannot be merged; the message names the file."""


@dataclass(frozen=True)
class LoraPair:
    """One LoRA update: the module it changes, its matrices' keys, and its scaling."""

    module: str
    """Module path relative to the base model (``model.layers.0.self_attn.q_proj``)."""
    kind: str
    """``linear`` (also GPT-2 Conv1D with `fan_in_fan_out`), ``embedding`` or ``conv``."""
    a_key: str
    """Key of A (r x in) in the adapter file."""
    b_key: str
    """Key of B (out x r) in the adapter file."""
    rank: int
    """r, as the config gives it for this module (checked against A's rows)."""
    scaling: float
    """alpha / r, or alpha / sqrt(r) for rsLoRA."""
    fan_in_fan_out: bool = False
    """The base weight is stored (in, out), as GPT-2's Conv1D does: the delta is transposed."""
    bias_key: str | None = None
    """Key of B's bias (``lora_bias=True``), added to the base bias times the scaling."""
    param: str = "weight"
    """The base parameter the delta applies to."""
    magnitude_key: str | None = None
    """DoRA: key of the magnitude vector m; the merge is ``m / ||W + delta||_row * (W + delta)``."""


@dataclass
class LoraAdapter:
    """A LoRA adapter folder, described without reading tensor data."""

    folder: Path
    """The adapter folder."""
    weights: Path
    """The file holding the adapter tensors."""
    library: str
    """``peft`` or ``adapters``."""
    pairs: list[LoraPair]
    """The LoRA updates, in file order."""
    replace: dict[str, str] = field(default_factory=dict)
    """Base parameter name -> adapter key whose values replace it (modules_to_save, base_layer)."""
    notes: list[str] = field(default_factory=list)
    """Lines for the job log."""


def is_adapter_folder(path: Path) -> bool:
    """Whether `path` is a folder holding ``adapter_config.json`` (PEFT or ``adapters``)."""
    return path.is_dir() and (path / "adapter_config.json").is_file()


def _weights(folder: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None


def _index(path: Path) -> FileIndex:
    index = read_file(path)
    if index.error:
        raise AdapterError(f"{path}: {index.error}")
    for rec in index.tensors:
        if len(rec.path) != 1:
            raise AdapterError(f"{path}: tensor {rec.name!r} is nested; expected a flat dict")
    return index


def read_adapter(folder: str | Path) -> LoraAdapter:
    """Describe the LoRA adapter in `folder`; `AdapterError` for anything not plain LoRA."""
    root = Path(folder)
    config_path = root / "adapter_config.json"
    config, err = read_json(config_path)
    if err is not None:
        raise AdapterError(f"{config_path}: {err}")
    if not isinstance(config, dict):
        raise AdapterError(f"{config_path}: not a JSON object")
    if "peft_type" in config:
        return _read_peft(root, config)
    if isinstance(config.get("config"), dict):
        return _read_adapters(root, config)
    raise AdapterError(f"{config_path}: neither a PEFT nor an adapters-library adapter config")


def suggested_base(folder: str | Path) -> Path | None:
    """The base model an adapter names (``base_model_name_or_path``), when it is a local folder.

    The app offers "merge into base" on an adapter node with this as the default ``--base``.
    """
    config, err = read_json(Path(folder) / "adapter_config.json")
    if err is not None or not isinstance(config, dict):
        return None
    name = config.get("base_model_name_or_path")
    if not isinstance(name, str) or not name:
        return None
    path = Path(name)
    if not path.is_absolute():
        path = Path(folder) / name if (Path(folder) / name).is_dir() else path
    return path if path.is_dir() else None


def pattern_value(patterns: dict[str, Any], name: str, default: Any) -> Any:
    """The value of the first pattern matching module `name` (PEFT's get_pattern_key)."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def _read_peft(root: Path, config: dict[str, Any]) -> LoraAdapter:
    where = root / "adapter_config.json"
    kind = str(config.get("peft_type"))
    if kind.upper() != "LORA":
        raise AdapterError(f"{where}: a {kind} adapter; only LoRA adapters can be merged")
    for key, label in _VARIANTS.items():
        if config.get(key):
            raise AdapterError(f"{where}: {label} adapters are not merged by ckpttui")
    weights = _weights(root, PEFT_WEIGHTS)
    if weights is None:
        raise AdapterError(f"{root}: adapter_config.json without {' or '.join(PEFT_WEIGHTS)}")
    index = _index(weights)
    try:
        r_default = int(config.get("r", 8))
        alpha_default = float(config.get("lora_alpha", 8))
    except (TypeError, ValueError):
        raise AdapterError(f"{where}: unreadable r / lora_alpha") from None
    rank_pattern = config.get("rank_pattern") or {}
    alpha_pattern = config.get("alpha_pattern") or {}
    rslora = bool(config.get("use_rslora"))
    fifo = bool(config.get("fan_in_fan_out"))
    shapes = {rec.name: rec.shape for rec in index.tensors}
    found: dict[str, dict[str, str]] = {}
    kinds: dict[str, str] = {}
    names: set[str] = set()
    replace: dict[str, str] = {}
    for key in shapes:
        rel = key.removeprefix(PEFT_PREFIX)
        if m := _PEFT_AB.match(rel):
            module, which, name, param = m.groups()
            slot = which if param == "weight" else "bias"
            if which == "A" and param == "bias":
                raise AdapterError(f"{weights}: {key}: lora_A has no bias in plain LoRA")
            kinds[module] = "conv" if len(shapes[key]) > 2 else "linear"
        elif m := _PEFT_EMB.match(rel):
            module, slot, name = m.groups()
            kinds[module] = "embedding"
        elif m := _PEFT_MAG.match(rel):
            module, name = m.groups()
            slot = "magnitude"
        elif ".lora_" in rel:
            raise AdapterError(f"{weights}: {key}: a LoRA variant tensor ckpttui does not merge")
        else:
            replace[rel.replace(".base_layer.", ".")] = key
            continue
        if name is not None:
            names.add(name)
        found.setdefault(module, {})[slot] = key
    if len(names) > 1:
        raise AdapterError(f"{weights}: holds several adapters ({', '.join(sorted(names))})")
    pairs = []
    for module, slots in found.items():
        if "A" not in slots or "B" not in slots:
            raise AdapterError(
                f"{weights}: module {module} has lora_{'B' if 'A' in slots else 'A'} missing"
            )
        r = int(pattern_value(rank_pattern, module, r_default))
        alpha = float(pattern_value(alpha_pattern, module, alpha_default))
        a_shape = shapes[slots["A"]]
        if not a_shape or a_shape[0] != r:
            raise AdapterError(
                f"{weights}: {slots['A']} has {a_shape[0] if a_shape else 0} rows but the "
                f"config gives {module} rank {r}"
            )
        if "magnitude" in slots and (kinds[module] != "linear" or not config.get("use_dora")):
            raise AdapterError(
                f"{weights}: DoRA on {module} ({kinds[module]}): only DoRA on linear layers "
                "is merged by ckpttui"
            )
        pairs.append(
            LoraPair(
                module,
                kinds[module],
                slots["A"],
                slots["B"],
                r,
                alpha / math.sqrt(r) if rslora else alpha / r,
                fan_in_fan_out=fifo and kinds[module] == "linear",
                bias_key=slots.get("bias"),
                magnitude_key=slots.get("magnitude"),
            )
        )
    if config.get("use_dora") and not any(p.magnitude_key for p in pairs):
        raise AdapterError(f"{weights}: use_dora is set but no lora_magnitude_vector is saved")
    adapter = LoraAdapter(root, weights, "peft", pairs, replace)
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(_RESIDUAL_INITS):
        adapter.notes.append(
            f"init_lora_weights={init!r} also changed the base weights when training began; "
            "merging into the original base gives PEFT's merge_and_unload result on that base"
        )
    return adapter


def _read_adapters(root: Path, config: dict[str, Any]) -> LoraAdapter:
    where = root / "adapter_config.json"
    cfg = config["config"]
    arch = str(cfg.get("architecture"))
    if arch != "lora":
        raise AdapterError(
            f"{where}: an adapters-library {arch!r} adapter; only LoRA adapters can be merged"
        )
    if cfg.get("use_gating"):
        raise AdapterError(f"{where}: gated LoRA (use_gating) depends on the input; not merged")
    mode = str(cfg.get("composition_mode", "add"))
    if mode != "add":
        raise AdapterError(
            f"{where}: composition_mode {mode!r} ((IA)^3 scaling) is not merged by ckpttui"
        )
    if cfg.get("use_dora"):
        raise AdapterError(f"{where}: DoRA (use_dora) adapters are not merged by ckpttui")
    if cfg.get("vera_d") is not None or cfg.get("vera_b") is not None:
        raise AdapterError(f"{where}: VeRA adapters are not merged by ckpttui")
    weights = _weights(root, ADAPTERS_WEIGHTS)
    if weights is None:
        raise AdapterError(f"{root}: adapter_config.json without {' or '.join(ADAPTERS_WEIGHTS)}")
    index = _index(weights)
    try:
        r = int(cfg.get("r", 8))
        alpha = float(cfg.get("alpha", 8))
    except (TypeError, ValueError):
        raise AdapterError(f"{where}: unreadable r / alpha") from None
    found: dict[str, dict[str, str]] = {}
    for rec in index.tensors:
        m = _ADAPTERS_AB.match(rec.name)
        if m is None:
            if ".loras." in rec.name:
                raise AdapterError(f"{weights}: {rec.name}: not a lora_A / lora_B matrix")
            continue  # prediction heads and other modules stay out of the base
        module, _name, which = m.groups()
        found.setdefault(module, {})[which] = rec.name
    pairs = []
    for module, slots in found.items():
        if "A" not in slots or "B" not in slots:
            raise AdapterError(f"{weights}: module {module} lacks lora_A or lora_B")
        pairs.append(LoraPair(module, "linear", slots["A"], slots["B"], r, alpha / r))
    if not pairs:
        raise AdapterError(f"{weights}: no LoRA matrices")
    heads = [r.name for r in index.tensors if _ADAPTERS_AB.match(r.name) is None]
    adapter = LoraAdapter(root, weights, "adapters", pairs)
    if heads:
        adapter.notes.append(
            f"left out {len(heads)} tensor(s) that are not LoRA matrices (prediction heads)"
        )
    return adapter
