"""Give every tensor a category (weights / optimizer / other) and a finer part, and sum them up.

The category of a tensor depends on where its framework keeps it: a whole file (``optimizer.pt``,
``*_optim_states.pt``, or what the layout's `file_role` says), a top-level key (``state_dict`` vs
``optimizer``, ``model`` vs ``last_optimizer_state``), or the shape of the dict around it (any
``{"state", "param_groups"}`` dict is a torch optimizer's state_dict, wherever it sits). Statistics
the model needs to run (a feature normaliser's mean and variance) are other/normalizer, never
reclaimable, wherever they are.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ckpttui.layouts import layout_named
from ckpttui.records import CATEGORIES, Category, FileIndex, TensorRecord

W, O, X = Category.WEIGHTS, Category.OPTIMIZER, Category.OTHER

# Top-level keys under which frameworks keep the model, the optimizer, and the rest.
WEIGHT_KEYS = {
    "state_dict",
    "model",
    "module",
    "model_state_dict",
    "model_state",
    "net",
    "network",
    "weights",
    "params",
    "generator",
    "model_state_dicts",
    "frozen_param_fragments",
}
OPTIMIZER_KEYS = {
    "optimizer",
    "optimizers",
    "optimizer_states",
    "optimizer_state_dict",
    "optimizer_state",
    "optim",
    "optim_state",
    "optim_state_dict",
    "last_optimizer_state",
    "opt",
    "base_optimizer_state",
}
OTHER_HINTS = (
    ("ema", "ema"),
    ("rng", "rng"),
    ("random", "rng"),
    ("sched", "scheduler"),
    ("scaler", "scaler"),
    ("normaliz", "normalizer"),
    ("callbacks", "callbacks"),
    ("loops", "loops"),
)
MASTER_KEYS = {
    "single_partition_of_fp32_groups",
    "fp32_flat_groups",
    "fp32_groups_flat",
    "fp32_groups",
    "fp32_partitioned_groups_flat",
    "fp32_flat_groups_partitioned",
    "fp32_groups_flat_partition",
}
OPT_PARTS = {
    "exp_avg",
    "exp_avg_sq",
    "max_exp_avg_sq",
    "step",
    "momentum_buffer",
    "sum",
    "square_avg",
    "acc_delta",
    "exp_inf",
    "mu_product",
    "ax",
    "eta",
    "prev",
    "exp_avg_factored_row",
    "exp_avg_factored_col",
    "exp_avg_sq_row",
    "exp_avg_sq_col",
}
# Parts of "other" that inference still needs: not counted as reclaimable.
NEEDED_OTHER_PARTS = {"normalizer"}

_LORA = re.compile(r"(^|\.)lora_(A|B|embedding_A|embedding_B|magnitude_vector)(\.|$)")
_ADAPTER = re.compile(
    r"(^|\.)adapters\.|(^|\.)adapter_(down|up)(\.|$)|(^|\.)adapter_fusion_layer\."
)


def is_optimizer_state(node: Any) -> bool:
    """Whether a dict is a torch optimizer's ``state_dict()`` (``state`` + ``param_groups``)."""
    return isinstance(node, dict) and "state" in node and "param_groups" in node


def _file_role(layout: str, name: str) -> Category | None:
    """A whole file's category when its name decides it, else None (look inside)."""
    lower = name.lower()
    if lower.endswith("optim_states.pt") or re.match(r"optimizer(_\d+)?\.(pt|bin|pth)$", lower):
        return O
    if re.match(r"(rng_state.*|scheduler|scaler|lr_scheduler)\.(pt|pth|bin)$", lower) or re.match(
        r"random_states(_\d+)?\.(pkl|pt|pth|bin)$", lower
    ):  # accelerate save_state
        return X
    if "normaliz" in lower:
        return X  # part normalizer: needed to run
    return layout_named(layout).file_role(name)


def _other_part(text: str) -> str:
    lower = text.lower()
    for hint, part in OTHER_HINTS:
        if hint in lower:
            return part
    return ""


def weight_part(name: str) -> str:
    """``lora`` or ``adapter`` for adapter parameters, ``base`` for everything else."""
    if _LORA.search(name):
        return "lora"
    if _ADAPTER.search(name):
        return "adapter"
    return "base"


def optimizer_part(path: tuple[str, ...]) -> str:
    """``master`` for fp32 master copies, the state name (``exp_avg``...) for per-parameter state."""
    if any(k in MASTER_KEYS for k in path):
        return "master"
    if path and path[-1] in OPT_PARTS:
        return path[-1]
    return "state"


def classify(layout: str, file_name: str, index: FileIndex) -> list[TensorRecord]:
    """The file's tensor records with category and part set."""
    role = _file_role(layout, file_name)
    # Files holding one flat mapping name -> tensor are model weights unless named otherwise.
    flat = isinstance(index.data, dict) and all(len(t.path) == 1 for t in index.tensors)
    out = []
    for rec in index.tensors:
        cat = role
        if cat is None:
            cat = _category_in_tree(layout, index, rec, flat)
        if cat is W:
            part = weight_part(rec.path[-1] if rec.path else rec.name)
        elif cat is O:
            part = optimizer_part(rec.path)
        else:
            part = _other_part(file_name if role is X else "/".join(rec.path))
        out.append(_with_role(rec, cat, part))
    return out


def _with_role(rec: TensorRecord, category: Category, part: str) -> TensorRecord:
    """`dataclasses.replace(rec, category=..., part=...)` at a fraction of its cost (per tensor)."""
    new = object.__new__(TensorRecord)
    new.__dict__.update(rec.__dict__)
    new.__dict__["category"] = category
    new.__dict__["part"] = part
    return new


def _category_in_tree(layout: str, index: FileIndex, rec: TensorRecord, flat: bool) -> Category:
    if index.format == "safetensors":
        return W
    if index.format == "dcp":
        top = rec.path[0].lower() if rec.path else ""
        if top in OPTIMIZER_KEYS or top.startswith("optim"):
            return O
        if top in WEIGHT_KEYS or len(rec.path) == 1:
            return W
        return X
    if "_parameters" in rec.path or "_buffers" in rec.path:
        return W  # torch.save(model): an nn.Module pickled whole
    node: Any = index.data
    for depth, key in enumerate(rec.path[:-1]):
        if is_optimizer_state(node):
            return O
        if depth == 0:
            lower = key.lower()
            if lower in OPTIMIZER_KEYS:
                return O
            if _other_part(lower):
                return X
            if lower in WEIGHT_KEYS:
                return W
        node = _child(node, key)
    if is_optimizer_state(node):
        return O
    if flat or len(rec.path) == 1:
        return X if _other_part(rec.path[-1]) in ("ema", "rng") else W
    return W if layout_named(layout).nested_weights else X


def _child(node: Any, key: str) -> Any:
    if isinstance(node, dict):
        if key in node:
            return node[key]
        for k, v in node.items():
            if str(k) == key:
                return v
    if isinstance(node, (list, tuple)) and key.isdigit() and int(key) < len(node):
        return node[int(key)]
    return None


@dataclass
class Breakdown:
    """Sums over a set of tensor records: by category, finer part, dtype and top-level module."""

    categories: dict[str, dict[str, int]] = field(
        default_factory=lambda: {c.value: {"tensors": 0, "bytes": 0} for c in CATEGORIES}
    )
    """category -> {"tensors": n, "bytes": b}."""
    parts: Counter[str] = field(default_factory=Counter)
    """``category/part`` -> bytes."""
    dtypes: Counter[str] = field(default_factory=Counter)
    """dtype -> number of tensors."""
    dtype_bytes: Counter[str] = field(default_factory=Counter)
    """dtype -> bytes."""
    modules: Counter[str] = field(default_factory=Counter)
    """Top-level module of each weight (``encoder``, ``decoder``) -> bytes."""
    tensors: int = 0
    """Number of named tensors."""
    bytes: int = 0
    """Sum of numel x element size over all named tensors."""
    reclaimable: int = 0
    """Bytes not needed to run the model: optimizer state and training-only state."""

    def add(self, rec: TensorRecord) -> None:
        """Count one tensor."""
        c = self.categories[rec.category.value]
        c["tensors"] += 1
        c["bytes"] += rec.nbytes
        self.parts[f"{rec.category.value}/{rec.part or '-'}"] += rec.nbytes
        self.dtypes[rec.dtype] += 1
        self.dtype_bytes[rec.dtype] += rec.nbytes
        self.tensors += 1
        self.bytes += rec.nbytes
        if rec.category is W:
            self.modules[module_of(rec.path[-1] if rec.path else rec.name)] += rec.nbytes
        elif rec.category is O or rec.part not in NEEDED_OTHER_PARTS:
            self.reclaimable += rec.nbytes

    def merge(self, other: Breakdown) -> None:
        """Add another breakdown's sums into this one."""
        for cat, sums in other.categories.items():
            self.categories[cat]["tensors"] += sums["tensors"]
            self.categories[cat]["bytes"] += sums["bytes"]
        self.parts.update(other.parts)
        self.dtypes.update(other.dtypes)
        self.dtype_bytes.update(other.dtype_bytes)
        self.modules.update(other.modules)
        self.tensors += other.tensors
        self.bytes += other.bytes
        self.reclaimable += other.reclaimable


_WRAPPERS = {
    "module",
    "_orig_mod",
    "model",
    "_forward_module",
    "_fsdp_wrapped_module",
    "base_model",
}


def module_of(key: str) -> str:
    """Top-level module of a state-dict key, past wrapper prefixes (``module.encoder.x`` -> encoder)."""
    parts = key.split(".")
    i = 0
    while i < len(parts) - 2 and parts[i] in _WRAPPERS:
        i += 1
    return parts[i] if len(parts) > 1 else "(root)"


def breakdown(records: list[TensorRecord]) -> Breakdown:
    """Sum classified records."""
    b = Breakdown()
    for rec in records:
        b.add(rec)
    return b
