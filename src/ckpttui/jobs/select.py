"""Choosing what to average or export: checkpoints of a run, and the weight tensors inside one.

`select_last` and `select_best` pick N checkpoints of one run from its inventory
(`ckpttui.inventory.scan`: names, sidecars and pickled metadata, never tensor data), by the rule
the run's framework applies in its own averaging script:

* FunASR: ``val_acc_step_or_epoch`` / ``val_loss_step_or_epoch`` (kind from
  ``avg_keep_nbest_models_type``), sorted by value descending; acc takes the first N, loss the
  last N (funasr/train_utils/average_nbest_models.py ``_get_checkpoint_paths``).
* WeNet: ``loss_dict.loss`` (v3) or ``cv_loss`` (v2) of each ``epoch_N.yaml``, lowest N
  (wenet/bin/average_model.py ``--val_best``).
* SpeechBrain: one ``CKPT.yaml`` meta key, lowest or highest N (``Checkpointer.find_checkpoints``
  ``min_key`` / ``max_key``); the key must be named when several are recorded.
* HF Trainer: ``eval_<metric>`` logged at each ``checkpoint-N``'s step in ``log_history``; higher
  is better unless the name ends in ``loss`` (``TrainingArguments.greater_is_better``).
* fairseq: the ``checkpoint.best_<metric>_<value>.pt`` files when kept (``keep_best_checkpoints``),
  else each epoch/update checkpoint's ``extra_state.val_loss``; lower is better unless
  ``maximize_best_checkpoint_metric``.
* Lightning: ``<metric>=<value>`` in the file names (``ModelCheckpoint``'s filename template).

Copies and earlier results are never candidates (``model.pt``, ``model.pt.best``, ``model.pt.avgN``,
``init.pt``, ``final.pt``, ``avg_N.pt``, ``checkpoint_best.pt``, ``checkpoint_last.pt``,
``last.ckpt``...). Both return the chosen paths oldest first, so "the last input" is the newest.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckpttui.inventory import Inventory, scan
from ckpttui.jobs.events import JobError
from ckpttui.layouts.base import dig
from ckpttui.records import Checkpoint

if TYPE_CHECKING:
    pass

TRAINING_LAYOUTS = ("funasr", "wenet", "fairseq", "lightning", "speechbrain", "hf-trainer")
_REGULAR: dict[str, re.Pattern[str]] = {
    "funasr": re.compile(r"^model\.pt\.ep\d+(\.\d+)?$"),
    "wenet": re.compile(r"^(epoch_|step_)?\d+\.pt$"),
    "fairseq": re.compile(r"^checkpoint(\d+|_\d+_\d+)\.pt$"),
    "hf-trainer": re.compile(r"^checkpoint-\d+$"),
}
_GENERIC_SKIP = re.compile(r"avg|average|best|last|latest|final|init", re.IGNORECASE)
_FAIRSEQ_BEST = re.compile(r"^checkpoint\.best_(.+?)_(\d+\.?\d*)\.pt$")
_LOWER_IS_BETTER = ("loss", "wer", "cer", "err", "ppl", "perplexity", "distance")


@dataclass
class Selection:
    """Checkpoints chosen for averaging, oldest first, and how they were chosen."""

    paths: list[Path]
    """The checkpoints (files or folders), in training order."""
    rule: str
    """One line: which rule chose them."""
    values: dict[str, float] = field(default_factory=dict)
    """The metric of each chosen checkpoint, by path (best N only)."""
    notes: list[str] = field(default_factory=list)
    """Checkpoints left out and why."""


def natural_key(text: str) -> list[Any]:
    """Sort key that orders ``ep2`` before ``ep10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _progress(ckpt: Checkpoint) -> tuple[float, list[Any]]:
    """Training progress of a checkpoint, for ordering (step, else epoch; natural name last)."""
    name = Path(ckpt.path).name
    meta = ckpt.info.get("meta")
    if ckpt.layout == "speechbrain" and isinstance(meta, dict):
        value: Any = meta.get("unixtime")
    elif ckpt.layout == "funasr":
        value = ckpt.info.get("batch_total")  # mid-epoch names count epochs from 0
    else:
        value = ckpt.step if ckpt.step is not None else ckpt.epoch
    number = float(value) if isinstance(value, (int, float)) else -math.inf
    return number, natural_key(name)


def _regular(ckpt: Checkpoint) -> bool:
    """Whether a checkpoint is a training save, not a copy or an earlier result."""
    name = Path(ckpt.path).name
    pattern = _REGULAR.get(ckpt.layout)
    if pattern is not None:
        return bool(pattern.match(name))
    if ckpt.layout == "lightning":
        return not re.match(r"^last(-v\d+)?\.ckpt$", name)
    if ckpt.layout == "speechbrain":
        return True
    return not _GENERIC_SKIP.search(name)


def run_checkpoints(
    root: str | os.PathLike[str], inventory: Inventory | None = None
) -> tuple[list[Checkpoint], list[str]]:
    """The regular checkpoints of the one run under `root`, oldest first, and notes on the rest."""
    inv = inventory if inventory is not None else scan_or_fail(Path(root))
    notes: list[str] = []
    found = [c for c in inv.checkpoints if _regular(c)]
    if any(c.layout in TRAINING_LAYOUTS for c in found):
        found = [c for c in found if c.layout in TRAINING_LAYOUTS]
    layouts = sorted({c.layout for c in found})
    if len(layouts) > 1:
        raise JobError(
            f"{root}: holds checkpoints of several layouts ({', '.join(layouts)}); "
            "pass one run's folder"
        )
    parents = sorted({str(Path(c.path).parent) for c in found})
    if len(parents) > 1:
        raise JobError(f"{root}: holds several runs ({', '.join(parents[:3])}); pass one of them")
    usable = []
    for ckpt in found:
        if ckpt.complete:
            usable.append(ckpt)
        else:
            notes.append(f"skipped {inv.rel(ckpt.path)}: " + "; ".join(ckpt.problems[:2]))
    if not usable:
        raise JobError(f"{root}: no complete training checkpoints found")
    return sorted(usable, key=_progress), notes


def select_last(
    root: str | os.PathLike[str], n: int, *, inventory: Inventory | None = None
) -> Selection:
    """The newest `n` checkpoints of a run (by step, epoch, or save time)."""
    ckpts, notes = run_checkpoints(root, inventory)
    epochs = [c for c in ckpts if re.match(r"^checkpoint\d+\.pt$", Path(c.path).name)]
    if ckpts[0].layout == "fairseq" and epochs and len(epochs) < len(ckpts):
        # scripts/average_checkpoints.py takes epoch or update checkpoints, never both
        notes.append(f"left out {len(ckpts) - len(epochs)} mid-epoch checkpoint_E_U.pt files")
        ckpts = epochs
    _check_n(root, n, len(ckpts), "training checkpoints")
    chosen = ckpts[-n:]
    return Selection(
        [Path(c.path) for c in chosen],
        f"last {n} of {len(ckpts)} {chosen[0].layout} checkpoints",
        notes=notes,
    )


def select_best(
    root: str | os.PathLike[str],
    n: int,
    *,
    metric: str | None = None,
    mode: str | None = None,
    inventory: Inventory | None = None,
) -> Selection:
    """The best `n` checkpoints of a run by the metric its framework recorded (see the module).

    `metric` names the value (``acc``, ``WER``, ``eval_loss``...; each framework has a default
    except SpeechBrain with several keys and Lightning); `mode` (``min``/``max``) overrides the
    framework's direction.
    """
    if mode not in (None, "min", "max"):
        raise JobError(f"mode must be 'min' or 'max', not {mode!r}")
    inv = inventory if inventory is not None else scan_or_fail(Path(root))
    ckpts, notes = run_checkpoints(root, inv)
    layout = ckpts[0].layout
    scorer = _SCORERS.get(layout)
    if scorer is None:
        raise JobError(
            f"{root}: {layout} checkpoints record no validation metric; "
            "choose the inputs, or take the last N"
        )
    ranked, rule = scorer(inv, ckpts, metric, mode, Path(root))
    _check_n(root, n, len(ranked), f"checkpoints ranked by {rule}")
    best = ranked[:n]
    order = {c.path: _progress(c) for c in inv.checkpoints}
    best.sort(key=lambda item: order.get(str(item[0]), (-math.inf, natural_key(item[0].name))))
    return Selection(
        [p for p, _ in best],
        f"best {n} of {len(ranked)} by {rule}",
        {str(p): v for p, v in best},
        notes,
    )


def _check_n(root: str | os.PathLike[str], n: int, have: int, what: str) -> None:
    if n < 1:
        raise JobError(f"choose at least one checkpoint, not {n}")
    if have < n:
        raise JobError(f"{root}: asked for {n} checkpoints but found {have} {what}")


def scan_or_fail(root: Path) -> Inventory:
    """`scan`, with a path that cannot be read as a JobError."""
    try:
        return scan(root)
    except OSError as exc:
        raise JobError(str(exc)) from None


def _lower_is_better(metric: str, mode: str | None) -> bool:
    if mode is not None:
        return mode == "min"
    return any(word in metric.lower() for word in _LOWER_IS_BETTER)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


Ranked = list[tuple[Path, float]]
Scorer = Callable[
    [Inventory, list[Checkpoint], "str | None", "str | None", Path], tuple[Ranked, str]
]


def _rank(scores: Ranked, lower: bool) -> Ranked:
    """Best first; ties keep training order (a stable sort)."""
    return sorted(scores, key=lambda item: item[1] if lower else -item[1])


def _funasr(
    inv: Inventory, ckpts: list[Checkpoint], metric: str | None, mode: str | None, root: Path
) -> tuple[Ranked, str]:
    newest = ckpts[-1]
    for ckpt in inv.checkpoints:  # model.pt (the latest save) holds every validated name
        if ckpt.layout == "funasr" and _progress(ckpt) > _progress(newest):
            newest = ckpt
    kind = metric or str(newest.info.get("avg_keep_nbest_models_type") or "acc")
    kind = kind.removeprefix("val_")
    if kind not in ("acc", "loss"):
        raise JobError(f"{root}: FunASR records val_acc and val_loss, not {metric!r}")
    values: dict[str, Any] = {}
    for ckpt in sorted((c for c in inv.checkpoints if c.layout == "funasr"), key=_progress):
        recorded = ckpt.info.get(f"val_{kind}")
        if isinstance(recorded, dict):
            values.update(recorded)
    folder = Path(ckpts[0].path).parent
    scores = [
        (folder / name, float(v))
        for name, v in values.items()
        if _number(v) is not None and (folder / name).is_file()
    ]
    if mode is None:
        # upstream: sorted by value descending; acc keeps the first N, loss the last N
        ranked = sorted(scores, key=lambda item: item[1], reverse=True)
        if kind == "loss":
            ranked.reverse()
        return ranked, f"val_{kind} (FunASR: {'highest' if kind == 'acc' else 'lowest'} first)"
    return _rank(scores, mode == "min"), f"val_{kind} ({mode})"


def _wenet(
    inv: Inventory, ckpts: list[Checkpoint], metric: str | None, mode: str | None, root: Path
) -> tuple[Ranked, str]:
    name = metric or "loss"
    scores: Ranked = []
    for ckpt in ckpts:
        value = _number(dig(ckpt.info, "loss_dict", name))
        if value is None:
            value = _number(ckpt.info.get("cv_loss" if name == "loss" else name))
        if value is not None:
            scores.append((Path(ckpt.path), value))
    lower = _lower_is_better(name, mode)
    return _rank(scores, lower), f"cv {name} (WeNet: {'lowest' if lower else 'highest'} first)"


def _speechbrain(
    inv: Inventory, ckpts: list[Checkpoint], metric: str | None, mode: str | None, root: Path
) -> tuple[Ranked, str]:
    keys: set[str] = set()
    for ckpt in ckpts:
        meta = ckpt.info.get("meta") or {}
        keys |= {
            k
            for k, v in meta.items()
            if _number(v) is not None and k not in ("unixtime", "end-of-epoch", "epoch")
        }
    if metric is None:
        if len(keys) != 1:
            raise JobError(
                f"{root}: CKPT.yaml records {', '.join(sorted(keys)) or 'no metric'}; "
                "name the metric to rank by"
            )
        metric = next(iter(keys))
    scores = [
        (Path(c.path), float(v))
        for c in ckpts
        if (v := _number((c.info.get("meta") or {}).get(metric))) is not None
    ]
    lower = _lower_is_better(metric, mode)
    return _rank(scores, lower), f"{metric} ({'min' if lower else 'max'}_key)"


def _hf_trainer(
    inv: Inventory, ckpts: list[Checkpoint], metric: str | None, mode: str | None, root: Path
) -> tuple[Ranked, str]:
    name = metric or "loss"
    name = name if name.startswith("eval_") else f"eval_{name}"
    at_step: dict[int, float] = {}
    for ckpt in sorted(ckpts, key=_progress):
        for entry in ckpt.info.get("log_history") or []:
            if isinstance(entry, dict) and isinstance(entry.get("step"), int):
                value = _number(entry.get(name))
                if value is not None:
                    at_step[entry["step"]] = value
    scores = [(Path(c.path), at_step[c.step]) for c in ckpts if c.step in at_step]
    lower = mode == "min" if mode is not None else name.endswith("loss")
    return _rank(scores, lower), f"{name} ({'lower' if lower else 'higher'} is better)"


def _fairseq(
    inv: Inventory, ckpts: list[Checkpoint], metric: str | None, mode: str | None, root: Path
) -> tuple[Ranked, str]:
    folder = Path(ckpts[0].path).parent
    maximize = False
    for ckpt in ckpts:
        data = inv.files.get(ckpt.path)
        flag = dig(data.data, "args", "maximize_best_checkpoint_metric") if data else None
        if flag is None and data is not None:
            flag = dig(data.data, "cfg", "checkpoint", "maximize_best_checkpoint_metric")
        maximize = bool(flag) if flag is not None else maximize
    lower = mode == "min" if mode is not None else not maximize
    best_files = []
    for path in sorted(folder.iterdir()):
        m = _FAIRSEQ_BEST.match(path.name)
        if m and (metric is None or m.group(1) == metric):
            best_files.append((path, float(m.group(2))))
    if best_files:
        return (
            _rank(best_files, lower),
            f"the value in checkpoint.best_* names ({'lowest' if lower else 'highest'} first)",
        )
    scores = [
        (Path(c.path), v) for c in ckpts if (v := _number(c.info.get("val_loss"))) is not None
    ]
    return _rank(scores, lower), f"extra_state val_loss ({'lowest' if lower else 'highest'} first)"


def _lightning(
    inv: Inventory, ckpts: list[Checkpoint], metric: str | None, mode: str | None, root: Path
) -> tuple[Ranked, str]:
    if metric is None:
        raise JobError(
            f"{root}: Lightning keeps metrics in file names only "
            "(epoch=3-val_loss=0.12.ckpt); name the metric"
        )
    pattern = re.compile(re.escape(metric) + r"=([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)")
    scores = [
        (Path(c.path), float(m.group(1))) for c in ckpts if (m := pattern.search(Path(c.path).stem))
    ]
    lower = mode != "max"  # ModelCheckpoint's mode defaults to "min"
    return _rank(scores, lower), f"{metric} in the file names ({'min' if lower else 'max'})"


_SCORERS: dict[str, Scorer] = {
    "funasr": _funasr,
    "wenet": _wenet,
    "speechbrain": _speechbrain,
    "hf-trainer": _hf_trainer,
    "fairseq": _fairseq,
    "lightning": _lightning,
}
