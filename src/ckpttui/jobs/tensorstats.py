"""Streaming statistics of one tensor's values, fed chunk by chunk of raw bytes (numpy, no torch).

`Stats` takes the raw little-endian bytes of a tensor in file order, in pieces of any size that
are whole elements, and keeps: NaN and Inf counts, min and max of the finite values, their mean,
standard deviation and L2 norm. Sums are taken over values shifted by a reference close to the
mean (the shifted-data algorithm), in float32 per chunk for float32/16 and bfloat16 tensors and
float64 across chunks, so a LayerNorm weight of ones with a spread of 1e-3 keeps its std.

bfloat16 has no numpy dtype: its 16 bits are the high half of a float32, so a chunk is widened
with one shift (``uint16 -> uint32 << 16``) and viewed as float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

# Dtypes whose values we read: torch dtype name -> numpy dtype of the stored elements.
_STORED: dict[str, Any] = {
    "float64": np.float64,
    "float32": np.float32,
    "float16": np.float16,
    "bfloat16": np.uint16,
    "int64": np.int64,
    "int32": np.int32,
    "int16": np.int16,
    "int8": np.int8,
    "uint8": np.uint8,
    "uint16": np.uint16,
    "uint32": np.uint32,
    "uint64": np.uint64,
    "bool": np.bool_,
}
FLOATING = ("float64", "float32", "float16", "bfloat16")


_SCRATCH: dict[tuple[str, int], np.ndarray] = {}


def _scratch(dtype: np.dtype, n: int, slot: int = 0) -> np.ndarray:
    """A reused buffer of `n` elements: no allocation (and no page faults) per chunk."""
    key = (dtype.str, slot)
    buf = _SCRATCH.get(key)
    if buf is None or buf.size < n:
        buf = _SCRATCH[key] = np.empty(n, dtype=dtype)
    return buf[:n]


def readable(dtype: str) -> bool:
    """Whether values of this dtype are checked (others are only CRC- and bounds-checked)."""
    return dtype in _STORED


@dataclass
class Summary:
    """What `Stats` found in one tensor."""

    count: int
    """Elements seen."""
    nan: int
    """NaN elements."""
    inf: int
    """+Inf and -Inf elements."""
    zero: bool
    """Every element is zero (and there is at least one)."""
    min: float | None
    """Smallest finite value (None when there is none)."""
    max: float | None
    """Largest finite value."""
    mean: float | None
    """Mean of the finite values."""
    std: float | None
    """Population standard deviation of the finite values."""
    norm: float | None
    """L2 norm of the finite values."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data."""
        return {
            "count": self.count,
            "nan": self.nan,
            "inf": self.inf,
            "zero": self.zero,
            "min": self.min,
            "max": self.max,
            "mean": self.mean,
            "std": self.std,
            "norm": self.norm,
        }


class Stats:
    """Running statistics of one tensor (see the module docstring); `feed` bytes, then `summary`."""

    def __init__(self, dtype: str, big_endian: bool = False) -> None:
        if dtype not in _STORED:
            raise ValueError(f"values of dtype {dtype} are not read")
        self.dtype = dtype
        stored = np.dtype(_STORED[dtype])
        self._stored = stored.newbyteorder(">") if big_endian and stored.itemsize > 1 else stored
        self._floating = dtype in FLOATING
        self.itemsize = stored.itemsize
        self.count = 0
        self.nan = 0
        self.inf = 0
        self._min = math.inf
        self._max = -math.inf
        self._finite = 0
        self._shift: float | None = None
        self._sum = 0.0
        self._sq = 0.0
        self._nonzero = False

    def feed(self, raw: Any) -> None:
        """Add a piece of raw bytes (a buffer of whole elements, in file order)."""
        x = np.frombuffer(raw, dtype=self._stored)
        if not x.size:
            return
        self.count += x.size
        x, owned = self._widen(x)
        lo, hi = x.min(), x.max()
        if self._floating and not (math.isfinite(lo) and math.isfinite(hi)):
            finite = np.isfinite(x)
            nan = int(np.count_nonzero(np.isnan(x)))
            self.nan += nan
            self.inf += x.size - int(np.count_nonzero(finite)) - nan
            x, owned = x[finite], True
            if not x.size:
                return
            lo, hi = x.min(), x.max()
        lo, hi = float(lo), float(hi)
        self._nonzero = self._nonzero or lo != 0.0 or hi != 0.0
        self._min = min(self._min, lo)
        self._max = max(self._max, hi)
        self._finite += x.size
        if self._shift is None:
            mean = float(x.mean(dtype=np.float64))
            # Centre only when the values sit far from zero compared to their spread.
            self._shift = mean if abs(mean) > 1e-2 * (hi - lo) else 0.0
        if self._shift:
            out = x if owned else _scratch(x.dtype, x.size, 1)
            x = np.subtract(x, np.asarray(self._shift, dtype=x.dtype), out=out)
        with np.errstate(over="ignore", invalid="ignore"):
            total = float(np.add.reduce(x))
            sq = float(np.dot(x, x))
        if not (math.isfinite(total) and math.isfinite(sq)):  # float32 sums overflowed
            wide = x.astype(np.float64)
            total, sq = float(np.add.reduce(wide)), float(np.dot(wide, wide))
        self._sum += total
        self._sq += sq

    def _widen(self, x: np.ndarray) -> tuple[np.ndarray, bool]:
        """Values as float32/float64, and whether they sit in scratch (ours to change)."""
        if self.dtype == "bfloat16":
            wide = np.left_shift(x, 16, out=_scratch(np.dtype(np.uint32), x.size), dtype=np.uint32)
            return wide.view(np.float32), True
        if self.dtype == "float16" or (self._floating and not self._stored.isnative):
            out = _scratch(np.dtype(np.float32 if self.itemsize <= 4 else np.float64), x.size)
            np.copyto(out, x, casting="unsafe")
            return out, True
        if not self._floating:
            out = _scratch(np.dtype(np.float64), x.size)
            np.copyto(out, x, casting="unsafe")
            return out, True
        return x, False

    def summary(self) -> Summary:
        """The statistics of everything fed so far."""
        if not self._finite:
            return Summary(self.count, self.nan, self.inf, False, None, None, None, None, None)
        n = self._finite
        shift = self._shift or 0.0
        mean_d = self._sum / n
        var = max(self._sq / n - mean_d * mean_d, 0.0)
        sq_total = self._sq + 2.0 * shift * self._sum + n * shift * shift
        return Summary(
            count=self.count,
            nan=self.nan,
            inf=self.inf,
            zero=not self._nonzero and self.nan == 0 and self.inf == 0,
            min=self._min,
            max=self._max,
            mean=shift + mean_d,
            std=math.sqrt(var),
            norm=math.sqrt(max(sq_total, 0.0)),
        )
