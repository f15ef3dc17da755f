"""Byte sizes and numbers for people."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(n: int | float) -> str:
    """Format a byte count with binary units, e.g. ``2.4 GiB``."""
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            if unit == "B":
                return f"{int(value)} B"
            return f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def epoch_text(epoch: int | None, info: Mapping[str, Any]) -> str:
    """The epoch for display: the fraction a layout recorded (``info["epoch_float"]``, e.g.
    ``0.75``, cut to two decimals, never rounded up to an epoch not finished), else the whole
    epoch, else ``""``."""
    value = info.get("epoch_float")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        whole, _, frac = f"{value:.6f}".partition(".")
        return f"{whole}.{frac[:2]}".rstrip("0").rstrip(".")
    return "" if epoch is None else str(epoch)


_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?i?B?)\s*$", re.IGNORECASE)
_FACTORS = {
    "": 1,
    "B": 1,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(text: str) -> int:
    """Parse ``5GB``, ``500MiB`` or ``1024`` into bytes (GB = 10**9, as transformers reads it)."""
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (try 5GB or 500MiB)")
    number, unit = match.groups()
    return int(float(number) * _FACTORS[unit.upper()])
