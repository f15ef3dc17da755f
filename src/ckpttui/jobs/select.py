"""Choosing what to average or export: the checkpoints of one run, last N or best N.

`select_last` and `select_best` pick N checkpoints of one run from its inventory
(`ckpttui.inventory.scan`: names, sidecars and pickled metadata, never tensor data). The run's
layout decides everything framework-specific: which files are regular training saves and never
copies, links or earlier averages (`Layout.is_candidate`), training order (`Layout.order`), the
pool ``--last`` takes from (`Layout.last_pool`), and the metric and rule of its own averaging
script for ``--best`` (`Layout.rank`). Both return the chosen paths oldest first, so "the last
input" is the newest; `Selection.ranked` keeps the best-first order for messages.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ckpttui.inventory import Inventory, scan
from ckpttui.jobs.events import JobError
from ckpttui.layouts import RankError, layout_named
from ckpttui.layouts.base import natural_key
from ckpttui.records import Checkpoint

__all__ = [
    "Selection",
    "candidates",
    "natural_key",
    "run_checkpoints",
    "scan_or_fail",
    "select_best",
    "select_last",
]


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
    ranked: list[Path] = field(default_factory=list)
    """Best N only: the same checkpoints best first."""

    def summary(self) -> str:
        """One line: the rule and the chosen checkpoints (best first with their values for best
        N, in training order for last N)."""
        if self.ranked:
            listed = ", ".join(
                f"{p.name} ({self.values[str(p)]:g})" if str(p) in self.values else p.name
                for p in self.ranked
            )
            return f"{self.rule}: {listed}; averaged in training order"
        return f"{self.rule}: " + ", ".join(p.name for p in self.paths)


def _order(ckpt: Checkpoint) -> tuple[float, list[object]]:
    return layout_named(ckpt.layout).order(ckpt)


def run_checkpoints(
    root: str | os.PathLike[str], inventory: Inventory | None = None
) -> tuple[list[Checkpoint], list[str]]:
    """The regular checkpoints of the one run under `root`, oldest first, and notes on the rest."""
    inv = inventory if inventory is not None else scan_or_fail(Path(root))
    notes: list[str] = []
    found = candidates(inv, root)
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
    return sorted(usable, key=_order), notes


def candidates(inv: Inventory, root: str | os.PathLike[str]) -> list[Checkpoint]:
    """The regular training saves in an inventory (never copies, links, averages or a file
    reached twice), complete or not, in walk order; several layouts are a JobError."""
    found = [
        c
        for c in inv.checkpoints
        if layout_named(c.layout).is_candidate(c)
        and "symlink_to" not in c.info
        and "same_file_as" not in c.info  # a file reached twice is one checkpoint
    ]
    if any(layout_named(c.layout).training for c in found):
        found = [c for c in found if layout_named(c.layout).training]
    layouts = sorted({c.layout for c in found})
    if len(layouts) > 1:
        raise JobError(
            f"{root}: holds checkpoints of several layouts ({', '.join(layouts)}); "
            "pass one run's folder"
        )
    return found


def select_last(
    root: str | os.PathLike[str], n: int, *, inventory: Inventory | None = None
) -> Selection:
    """The newest `n` checkpoints of a run (by step, epoch, or save time)."""
    ckpts, notes = run_checkpoints(root, inventory)
    ckpts, left = layout_named(ckpts[0].layout).last_pool(ckpts)
    notes.extend(left)
    _check_n(root, n, len(ckpts), "training checkpoints")
    chosen = ckpts[-n:]
    return Selection(
        [Path(c.path) for c in chosen],
        f"last {n} of {len(ckpts)} {layout_named(chosen[0].layout).title} checkpoints",
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

    `metric` names the value (``acc``, ``WER``, ``eval_loss``...; each layout has a default, or
    says that the run records several and one must be named); `mode` (``min``/``max``) overrides
    the framework's direction.
    """
    if mode not in (None, "min", "max"):
        raise JobError(f"mode must be 'min' or 'max', not {mode!r}")
    inv = inventory if inventory is not None else scan_or_fail(Path(root))
    ckpts, notes = run_checkpoints(root, inv)
    layout = layout_named(ckpts[0].layout)
    siblings = [c for c in inv.checkpoints if c.layout == layout.name]
    try:
        ranked, rule = layout.rank(ckpts, siblings, inv.files, metric, mode, Path(root))
    except RankError as exc:
        raise JobError(str(exc)) from None
    _check_n(root, n, len(ranked), f"checkpoints ranked by {rule}")
    best = ranked[:n]
    order = {c.path: _order(c) for c in inv.checkpoints}
    in_training = sorted(
        best, key=lambda item: order.get(str(item[0]), (-math.inf, natural_key(item[0].name)))
    )
    return Selection(
        [p for p, _ in in_training],
        f"best {n} of {len(ranked)} by {rule}",
        {str(p): v for p, v in best},
        notes,
        [p for p, _ in best],
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
