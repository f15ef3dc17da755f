"""Fused one-pass statistics of float tensors (the C module of `_moments.c`)."""

from typing import Any

def moments(
    buffer: Any, kind: str, shift: float, /
) -> tuple[int, int, int, float, float, float, float]:
    """(nan, inf, finite, min, max, sum, sum of squares) of the finite values minus `shift`."""

def use_f16c(flag: bool, /) -> bool:
    """Read float16 with F16C where the CPU has it (the default), or without; whether it is used."""
