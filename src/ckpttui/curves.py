"""Training curves: the metric each framework recorded per step or epoch, and where checkpoints sit.

Each layout says which metrics its checkpoints recorded (`Layout.curve_points`) and where a
checkpoint sits on the x axis (`Layout.curve_x`). Everything comes from an `Inventory`.
"""

from __future__ import annotations

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
