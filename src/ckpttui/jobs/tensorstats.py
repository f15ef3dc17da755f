"""Streaming statistics of one tensor's values, fed chunk by chunk of raw bytes (numpy, no torch).

`Stats` takes the raw little-endian bytes of a tensor, in pieces of any size that are whole
elements, in any order and from several threads at once, and keeps: NaN and Inf counts, min and
max of the finite values, their mean, standard deviation and L2 norm.

Each piece is summed on its own (outside any lock; numpy and BLAS release the GIL) and merged
under the tensor's lock. Sums are taken over values shifted by a reference close to the mean
(the shifted-data algorithm) when the mean dwarfs the spread, in float32 per piece for
float32/16 and bfloat16 tensors and float64 across pieces, so a LayerNorm weight of ones with a
spread of 1e-3 keeps its std; pieces summed with different references are merged exactly.
Sum and sum of squares are BLAS dot products: one SIMD pass each over a piece in cache.

bfloat16 has no numpy dtype: its 16 bits are the high half of a float32, so a piece is widened
two elements per uint32 (`_widen_bf16`) and viewed as float32.

Where the optional C module `ckpttui.jobs._moments` was built (``pip install`` with a C
compiler; see setup.py), float32, float16, bfloat16 and float64 pieces in native byte order are
read by it instead: NaN/Inf counts, min, max, sum and sum of squares in one pass, with the same
centring, GIL released. numpy does everything else, and everything when the module is absent.
"""

from __future__ import annotations

import math
import struct
import sys
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

try:
    from ckpttui.jobs import _moments
except ImportError:  # built without a C compiler: numpy does it all
    _moments = None  # type: ignore[assignment]

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
# Dtypes `_moments` reads: torch dtype name -> its kind letter.
_KINDS = {"float32": "f", "float16": "e", "bfloat16": "b", "float64": "d"}
_LITTLE = sys.byteorder == "little"


_LOCAL = threading.local()


def _scratch(dtype: np.dtype, n: int, slot: int = 0) -> np.ndarray:
    """A reused buffer of `n` elements, one per thread: no allocation (no page faults) per piece."""
    buffers: dict[tuple[str, int], np.ndarray] | None = getattr(_LOCAL, "buffers", None)
    if buffers is None:
        buffers = _LOCAL.buffers = {}
    key = (dtype.str, slot)
    buf = buffers.get(key)
    if buf is None or buf.size < n:
        buf = buffers[key] = np.empty(n, dtype=dtype)
    return buf[:n]


_ONES: dict[str, np.ndarray] = {}
# Largest n * max|x|^2 whose sums (and those of values shifted by at most max|x|) stay finite.
_SAFE = {"f": 1e37, "d": 1e306}
# float32 pieces whose values are all smaller than this are summed in float64: their squares
# would underflow float32 (the C module does the same).
_TINY = 1e-18


def _sums(x: np.ndarray) -> tuple[float, float]:
    """Sum and sum of squares of float32/64 `x`, both BLAS dot products (one pass each, SIMD).

    numpy's own ``add.reduce`` is pairwise and several times slower than ``dot`` here; the dot
    accumulates in many lanes, so its rounding stays far below the tolerance of the statistics.
    """
    ones = _ONES.get(x.dtype.str)
    if ones is None or ones.size < x.size:
        ones = _ONES[x.dtype.str] = np.ones(max(x.size, 1 << 16), dtype=x.dtype)
    return float(np.dot(x, ones[: x.size])), float(np.dot(x, x))


def _widen_f16(x: np.ndarray) -> np.ndarray:
    """float16 values (native order, none NaN or Inf) as float32, in scratch, in any order.

    numpy's own cast runs at about 2 GB/s here. Instead each half's bits are moved to their
    float32 places (sign to bit 31, exponent and mantissa 13 bits up) and the result scaled by
    2**112, which rebiases the exponent and makes subnormal halves exact too: two elements per
    uint32 word, ten same-type passes, 1.6x faster. Inf and NaN would come out finite (>= 65536):
    pieces holding them take the exact cast (`_range16` finds them first).
    """
    n = x.size
    half = n // 2 if _LITTLE else 0
    out = _scratch(np.dtype(np.uint32), n)
    if half:
        words = x[: 2 * half].view(np.uint32)
        tmp = _scratch(np.dtype(np.uint32), half, 2)
        first, second = out[:half], out[half : 2 * half]
        np.bitwise_and(words, np.uint32(0x7FFF), out=first)  # the first half of each word
        np.left_shift(first, np.uint32(13), out=first)
        np.bitwise_and(words, np.uint32(0x8000), out=tmp)
        np.left_shift(tmp, np.uint32(16), out=tmp)
        np.bitwise_or(first, tmp, out=first)
        np.right_shift(words, np.uint32(3), out=second)  # the second: already high
        np.bitwise_and(second, np.uint32(0x0FFFE000), out=second)
        np.bitwise_and(words, np.uint32(0x80000000), out=tmp)
        np.bitwise_or(second, tmp, out=second)
        scaled = out[: 2 * half].view(np.float32)
        np.multiply(scaled, np.float32(2.0**112), out=scaled)
    wide = out.view(np.float32)
    wide[2 * half :] = x[2 * half :]
    return wide


def _f16_bits_work() -> bool:
    """Whether `_widen_f16` is exact here (not when subnormal float32 inputs read as zero)."""
    probe = np.array([0x0001, 0x8001, 0x03FF, 0x3C00, 0xFBFF, 0x7BFF, 0x0400], dtype=np.uint16)
    halves = probe.view(np.float16)
    wide = _widen_f16(halves).copy()
    return bool(np.array_equal(np.sort(wide), np.sort(halves.astype(np.float32))))


# The exponent of Inf and NaN (all ones) in the 16-bit floats' bit patterns.
_TOP16 = {"bfloat16": 0x7F80, "float16": 0x7C00}


def _range16(x: np.ndarray, top: int) -> tuple[float, float] | None:
    """Min and max of 16-bit floats from their bit patterns; None when a NaN or Inf is there.

    Sign and magnitude order like integers: read as int16 the largest pattern is the largest
    positive value, read as uint16 the largest is the negative of largest magnitude. Two integer
    reductions over the stored bytes, where float ones would run over twice as many, widened.
    """
    signed = int(np.maximum.reduce(x.view(np.int16)))
    unsigned = int(np.maximum.reduce(x.view(np.uint16)))
    if signed >= top or unsigned >= 0x8000 | top:
        return None  # +-Inf or NaN: counted on the widened values
    if signed < 0 or unsigned < 0x8000:  # all negative (or all not): smallest magnitude
        least = int(np.minimum.reduce(x.view(np.uint16)))
        signed = least if signed < 0 else signed
        unsigned = least if unsigned < 0x8000 else unsigned
    return _value16(unsigned, top), _value16(signed, top)


def _value16(bits: int, top: int) -> float:
    """The value of a 16-bit float's bit pattern."""
    if top == _TOP16["bfloat16"]:
        return float(struct.unpack("<f", struct.pack("<I", (bits & 0xFFFF) << 16))[0])
    return float(struct.unpack("<e", struct.pack("<H", bits & 0xFFFF))[0])


def _widen_bf16(x: np.ndarray) -> np.ndarray:
    """bfloat16 values as float32, in scratch; pairs of elements go through one uint32 each.

    A bfloat16 is the high half of a float32. Read two at a time as one little-endian uint32,
    the second element is that word with its low half cleared and the first is the word shifted
    left by 16: two same-type passes, where widening each uint16 costs a slower casting loop.
    The values come out reordered (firsts then seconds), which no statistic here minds.
    """
    n = x.size
    out = _scratch(np.dtype(np.uint32), n)
    half = n // 2 if x.dtype.isnative and _LITTLE else 0
    if half:
        pairs = x[: 2 * half].view(np.uint32)
        np.bitwise_and(pairs, np.uint32(0xFFFF0000), out=out[:half])
        np.left_shift(pairs, np.uint32(16), out=out[half : 2 * half])
    if n > 2 * half:
        np.left_shift(x[2 * half :], 16, out=out[2 * half :], dtype=np.uint32)
    return out.view(np.float32)


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


# What one piece adds: count, NaN, Inf, finite count, min, max, reference, sum, sum of squares
# (the sums are of the finite values minus the reference).
_Part = tuple[int, int, int, int, float, float, float, float, float]


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
        # 16-bit floats in native order: min and max from their bit patterns (`_range16`).
        self._top16 = _TOP16.get(dtype, 0) if self._stored.isnative else 0
        # The C module's kind letter when it reads this tensor (it reads native order only).
        self._kind = _KINDS.get(dtype) if _moments is not None and self._stored.isnative else None
        self.count = 0
        self.nan = 0
        self.inf = 0
        self._min = math.inf
        self._max = -math.inf
        self._finite = 0
        self._shift: float | None = None
        self._sum = 0.0
        self._sq = 0.0
        self._lock = threading.Lock()

    @property
    def fused(self) -> bool:
        """Whether the C module reads the values (one pass, in any size of piece)."""
        return self._kind is not None

    def feed(self, raw: Any) -> None:
        """Add a piece of raw bytes (a buffer of whole elements); safe from several threads."""
        part = self._part_c(raw) if self._kind else self._part(raw)
        if part is not None:
            self._merge(part)

    def _part(self, raw: Any) -> _Part | None:
        """The numbers of one piece (all the numpy work, no shared state written)."""
        x = np.frombuffer(raw, dtype=self._stored)
        count = x.size
        if not count:
            return None
        nan = inf = 0
        bounds = _range16(x, self._top16) if self._top16 else None
        x, owned = self._widen(x, exact=bounds is None)
        if bounds is not None:
            lo, hi = bounds
        else:
            lo, hi = float(np.minimum.reduce(x)), float(np.maximum.reduce(x))
        if self._floating and not (math.isfinite(lo) and math.isfinite(hi)):
            finite = np.isfinite(x)
            nan = int(np.count_nonzero(np.isnan(x)))
            inf = x.size - int(np.count_nonzero(finite)) - nan
            x, owned = x[finite], True
            if not x.size:
                return (count, nan, inf, 0, math.inf, -math.inf, 0.0, 0.0, 0.0)
            lo, hi = float(np.minimum.reduce(x)), float(np.maximum.reduce(x))
        n = x.size
        top = max(-lo, hi)
        if top**2 * n > _SAFE[x.dtype.char] or (x.dtype.char == "f" and 0 < top < _TINY):
            x, owned = x.astype(np.float64), True  # float32 squares would overflow, or underflow
        shift = self._shift
        if shift is None:  # the first piece (or one of the first, in parallel)
            total, sq = _sums(x)
            mean = total / n
            # Centre only when the values sit far from zero compared to their spread: the
            # sum of squares then loses the spread (a LayerNorm weight of ones).
            if mean * mean <= sq / n - mean * mean:
                return (count, nan, inf, n, lo, hi, 0.0, total, sq)
            shift = mean
        shift = float(x.dtype.type(shift))  # exactly the reference subtracted
        if shift:
            out = x if owned else _scratch(x.dtype, n, 1)
            x = np.subtract(x, x.dtype.type(shift), out=out)
        total, sq = _sums(x)
        return (count, nan, inf, n, lo, hi, shift, total, sq)

    def _part_c(self, raw: Any) -> _Part | None:
        """`_part` in one pass of the C module (twice for the first piece when it is centred)."""
        kind = self._kind
        assert kind is not None and _moments is not None
        shift = self._shift
        nan, inf, n, lo, hi, total, sq = _moments.moments(raw, kind, shift or 0.0)
        count = nan + inf + n
        if not count:
            return None
        if not n:
            return (count, nan, inf, 0, math.inf, -math.inf, 0.0, 0.0, 0.0)
        if shift is None:  # as in `_part`: centre only when the mean dwarfs the spread
            mean = total / n
            if mean * mean <= sq / n - mean * mean:
                return (count, nan, inf, n, lo, hi, 0.0, total, sq)
            shift = self._rounded(mean)
            _, _, n, lo, hi, total, sq = _moments.moments(raw, kind, shift)
        return (count, nan, inf, n, lo, hi, self._rounded(shift), total, sq)

    def _rounded(self, shift: float) -> float:
        """The reference as the C module subtracts it: float32 but for float64 tensors."""
        return shift if self._kind == "d" else float(np.float32(shift))

    def _merge(self, part: _Part) -> None:
        count, nan, inf, n, lo, hi, shift, total, sq = part
        with self._lock:
            self.count += count
            self.nan += nan
            self.inf += inf
            if not n:
                return
            self._finite += n
            self._min = min(self._min, lo)
            self._max = max(self._max, hi)
            if self._shift is None:
                self._shift = shift
            d = shift - self._shift
            if d:  # summed around another reference: sum (x - c) = sum (x - c') + n (c' - c)...
                total, sq = total + n * d, sq + 2.0 * d * total + n * d * d
            self._sum += total
            self._sq += sq

    def _widen(self, x: np.ndarray, exact: bool = True) -> tuple[np.ndarray, bool]:
        """Values as float32/float64 (in any order), and whether they sit in scratch (ours).

        `exact`: NaN and Inf must stay what they are (`_widen_f16` makes them finite).
        """
        if self.dtype == "bfloat16":
            return _widen_bf16(x), True
        if self.dtype == "float16" and self._top16 and not exact and _F16_BITS:
            return _widen_f16(x), True
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
            zero=self._min == 0.0 and self._max == 0.0 and self.nan == 0 and self.inf == 0,
            min=self._min,
            max=self._max,
            mean=shift + mean_d,
            std=math.sqrt(var),
            norm=math.sqrt(max(sq_total, 0.0)),
        )


_F16_BITS = _f16_bits_work()
