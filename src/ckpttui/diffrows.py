"""The order of a diff report's rows, most changed first: one rule for `ckpttui diff` and the app.

Rows are the report's ``tensors`` or ``modules`` (``jobs/diff.py``). Not comparable (NaN/Inf,
complex) counts as most changed; a changed integer tensor (a step counter such as
``num_batches_tracked``) comes after every changed float one; equal tensors and frozen modules
come last, in their order. Plain data: no torch, no numpy.
"""

from __future__ import annotations

import math
from typing import Any


def change_of(row: dict[str, Any]) -> float:
    """How much a tensor or module row changed, for sorting."""
    if row.get("equal") or row.get("frozen"):
        return 0.0
    if row.get("integer"):
        return 1e-300
    rel = row.get("rel_change")
    return math.inf if rel is None else float(rel)


def by_change(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Most changed first; unchanged ones last, in their order (the sort is stable)."""
    return sorted(rows, key=lambda r: -change_of(r))
