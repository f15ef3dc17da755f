"""Training curves: the metric each framework recorded per step or epoch, and where checkpoints sit.

Sources: HF ``trainer_state.json`` log_history (loss, eval_loss); WeNet ``epoch_N.yaml``
(``loss_dict.loss`` in 3.x, ``cv_loss`` in 2.x); SpeechBrain ``CKPT.yaml`` meta (WER, ACC, loss);
FunASR ``val_acc_step_or_epoch`` / ``val_loss_step_or_epoch``; fairseq ``extra_state.val_loss``;
DeepSpeed client state (``cv_loss``, ``loss``). Everything comes from an `Inventory`.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field

from ckpttui.inventory import Inventory


@dataclass
class Series:
    """One metric over training: x is the step (or epoch when no steps are known)."""

    name: str
    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)


@dataclass
class Curve:
    """Metric series plus the positions of the checkpoints on the same x axis."""

    x_label: str = "step"
    series: list[Series] = field(default_factory=list)
    checkpoints: list[tuple[float, str]] = field(default_factory=list)
    """(x, label) of each checkpoint."""
    lower_is_better: dict[str, bool] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """No metric was recorded."""
        return not any(s.x for s in self.series)


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _add(series: dict[str, Series], name: str, x: float | None, y: object) -> None:
    v = _num(y)
    if x is None or v is None:
        return
    s = series.setdefault(name, Series(name))
    s.x.append(x)
    s.y.append(v)


def build_curve(inv: Inventory) -> Curve:
    """Collect every recorded metric of the checkpoints in an inventory."""
    series: dict[str, Series] = {}
    curve = Curve()
    # Epoch-based toolkits (FunASR, WeNet, SpeechBrain, fairseq) plot per epoch; HF per step.
    with_epoch = sum(c.epoch is not None for c in inv.checkpoints)
    with_step = sum(c.step is not None for c in inv.checkpoints)
    by_epoch = (
        with_epoch > 0
        and with_epoch >= with_step
        and not any(c.layout == "hf-trainer" for c in inv.checkpoints)
    )
    hf_history: list[dict[str, object]] = []
    for ckpt in inv.checkpoints:
        info = ckpt.info
        x: float | None = ckpt.epoch if by_epoch else ckpt.step
        if by_epoch and x is not None and ckpt.layout == "funasr" and ckpt.step is not None:
            x += 0.5  # model.pt.ep1.3: mid-way through (0-based) epoch 1
        label = inv.rel(ckpt.path) or "."
        if ckpt.layout == "hf-trainer" and isinstance(info.get("log_history"), list):
            if len(info["log_history"]) > len(hf_history):
                hf_history = info["log_history"]
        elif ckpt.layout == "wenet" or info.get("variant") == "wenet":
            loss = (
                info.get("loss_dict", {}).get("loss")
                if isinstance(info.get("loss_dict"), dict)
                else info.get("cv_loss")
            )
            _add(series, "cv_loss", x, loss)
        elif ckpt.layout == "speechbrain":
            meta_value = info.get("meta")
            meta: dict[str, object] = meta_value if isinstance(meta_value, dict) else {}
            for key, value in meta.items():
                if key not in ("unixtime", "end-of-epoch", "epoch") and _num(value) is not None:
                    _add(series, key, x, value)
        elif ckpt.layout == "funasr":
            for metric in ("val_acc", "val_loss"):
                values = info.get(metric)
                if isinstance(values, dict):
                    for name, value in values.items():
                        m = re.match(r"(?:model\.pt\.)?ep(\d+)(?:\.(\d+))?$", str(name))
                        if m:
                            ex = float(m.group(1)) + (0.5 if m.group(2) else 0.0)
                            _add(series, metric, ex, value)
        elif ckpt.layout == "fairseq":
            _add(series, "val_loss", x, info.get("val_loss"))
        elif ckpt.layout == "deepspeed":
            for key in ("cv_loss", "val_loss", "loss"):
                _add(series, key, x, info.get(key))
        if x is not None:
            curve.checkpoints.append((float(x), label))
    for entry in hf_history:
        if not isinstance(entry, dict):
            continue
        step = _num(entry.get("step"))
        for key in ("loss", "eval_loss"):
            _add(series, key, step, entry.get(key))
    for s in series.values():
        pairs = sorted(set(zip(s.x, s.y)))
        s.x = [p[0] for p in pairs]
        s.y = [p[1] for p in pairs]
    curve.series = sorted(series.values(), key=lambda s: s.name)
    curve.x_label = "epoch" if by_epoch else "step"
    curve.checkpoints.sort()
    curve.lower_is_better = {
        s.name: not any(k in s.name.lower() for k in ("acc", "bleu", "f1")) for s in curve.series
    }
    return curve


def split_runs(inv: Inventory) -> list[tuple[str, Inventory]]:
    """One inventory per run (the folder that holds its checkpoints), so runs are not mixed.

    Each keeps the original root, so checkpoint labels stay relative to it.
    """
    runs: dict[str, Inventory] = {}
    for ckpt in inv.checkpoints:
        folder = os.path.dirname(ckpt.path.rstrip(os.sep))
        sub = runs.get(folder)
        if sub is None:
            sub = runs[folder] = Inventory(root=inv.root)
        sub.checkpoints.append(ckpt)
        for f in ckpt.files:
            if f in inv.files:
                sub.files[f] = inv.files[f]
            if f in inv.records:
                sub.records[f] = inv.records[f]
    return sorted(runs.items())


def scale_groups(curve: Curve) -> list[list[Series]]:
    """Series grouped by direction and magnitude, one plot each.

    Accuracies (higher is better) never share an axis with losses, and a loss in 7-14 not with
    one in 0.1-0.5.
    """
    groups: dict[tuple[bool, int], list[Series]] = {}
    for s in curve.series:
        if not s.y:
            continue
        top = max(abs(v) for v in s.y) or 1.0
        key = (curve.lower_is_better.get(s.name, True), math.floor(math.log10(top) + 0.3))
        groups.setdefault(key, []).append(s)
    return [groups[k] for k in sorted(groups)]


def best_point(curve: Curve, series: Series) -> tuple[float, float]:
    """(x, value) of a series' best value (lowest, or highest for accuracies)."""
    pick = min if curve.lower_is_better.get(series.name, True) else max
    value = pick(series.y)
    return series.x[series.y.index(value)], value


def checkpoint_near(curve: Curve, x: float) -> str | None:
    """Label of the checkpoint saved at (or nearest to) x on the curve's axis."""
    if not curve.checkpoints:
        return None
    return min(curve.checkpoints, key=lambda c: abs(c[0] - x))[1]


def checkpoint_metric(inv: Inventory) -> tuple[str, float] | None:
    """(metric, value) recorded for the single checkpoint of an inventory, for a list column."""
    if len(inv.checkpoints) != 1:
        return None
    curve = build_curve(inv)
    if curve.empty or not curve.checkpoints:
        return None
    x = curve.checkpoints[0][0]
    for s in curve.series:
        for sx, sy in zip(s.x, s.y):
            if abs(sx - x) < 1e-6:
                return s.name, sy
    return None
