"""Training curves: the metric each framework recorded per step or epoch, and where checkpoints sit.

Each layout says which metrics its checkpoints recorded (`Layout.curve_points`) and where a
checkpoint sits on the x axis (`Layout.curve_x`). Everything comes from an `Inventory`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from ckpttui.inventory import Inventory
from ckpttui.layouts import layout_named


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
    """Collect every recorded metric of the checkpoints in an inventory (each layout says which)."""
    series: dict[str, Series] = {}
    curve = Curve()
    # Epoch-based runs plot per epoch; a layout whose curves are per step (log every N steps) wins.
    with_epoch = sum(c.epoch is not None for c in inv.checkpoints)
    with_step = sum(c.step is not None for c in inv.checkpoints)
    by_epoch = (
        with_epoch > 0
        and with_epoch >= with_step
        and not any(layout_named(c.layout).steps_axis for c in inv.checkpoints)
    )
    for ckpt in inv.checkpoints:
        layout = layout_named(ckpt.layout)
        x = layout.curve_x(ckpt, by_epoch)
        for name, px, py in layout.curve_points(ckpt, x):
            _add(series, name, px, py)
        if x is not None:
            curve.checkpoints.append((float(x), inv.rel(ckpt.path) or "."))
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
