"""Helpers for the average and export tests: reference loads, exact comparisons, file digests."""

from __future__ import annotations

import argparse
import hashlib
import threading
from pathlib import Path
from typing import Any

import torch


def load(path: Path) -> Any:
    """``torch.load(weights_only=True)``, allowing argparse.Namespace (fairseq ``args``)."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


def bits(t: torch.Tensor) -> torch.Tensor:
    """A tensor's raw bytes, so NaN payloads and -0.0 compare exactly."""
    flat = t.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8) if flat.numel() else flat


def identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bytes."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))


def digests(*roots: Path) -> dict[str, str]:
    """sha256 of every file under the given files and folders."""
    out = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


class CancelAfter(threading.Event):
    """A cancel event that reports itself set from its `n`-th check on (cancels mid-way)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.checks = 0

    def is_set(self) -> bool:
        self.checks += 1
        return self.checks >= self.n or super().is_set()


class AttributeDict(dict):  # type: ignore[type-arg]
    """Stands for Lightning's ``AttributeDict`` (a dict subclass pickled into hyper_parameters)."""
