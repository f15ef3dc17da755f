"""The toolkit side of a round trip: runs inside the toolkit's venv (``tk_NAME.py train|check``).

``train WORK`` trains the tiny model with the toolkit's own entry point into WORK; ``check LOADER
WORK`` runs ``load_LOADER(work)``, which loads ckpttui's output with the toolkit's own loader and
compares values. The last printed line is the verdict the driver records.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any


def main(namespace: dict[str, Any]) -> None:
    """Dispatch ``train WORK`` / ``check LOADER WORK`` to the calling module's functions."""
    args = sys.argv[1:]
    try:
        if args[:1] == ["train"] and len(args) == 2:
            detail = namespace["train"](Path(args[1]))
        elif args[:1] == ["check"] and len(args) == 3:
            fn: Callable[[Path], str] = namespace[f"load_{args[1]}"]
            detail = fn(Path(args[2]))
        else:
            print("usage: tk_NAME.py train WORK | check LOADER WORK", file=sys.stderr)
            sys.exit(2)
    except Exception as exc:  # the verdict line names the loader's own error
        traceback.print_exc()
        frames = traceback.extract_tb(exc.__traceback__)
        where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
        print(
            f"\n{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}{where}"
        )
        sys.exit(1)
    print(f"\n{detail or 'ok'}")


def same(a: Any, b: Any, what: str, atol: float = 0.0) -> None:
    """Raise AssertionError naming the first key whose tensor differs (exactly, or beyond atol)."""
    import torch

    if set(a) != set(b):
        missing = sorted(set(b) - set(a))[:3]
        extra = sorted(set(a) - set(b))[:3]
        raise AssertionError(f"{what}: keys differ (missing {missing}, unexpected {extra})")
    for key in a:
        x, y = a[key], b[key]
        if x.shape != y.shape or x.dtype != y.dtype:
            raise AssertionError(
                f"{what}: {key} is {x.dtype}{list(x.shape)}, want {y.dtype}{list(y.shape)}"
            )
        if atol and x.is_floating_point():
            if not torch.allclose(x.double(), y.double(), rtol=0, atol=atol):
                diff = (x.double() - y.double()).abs().max().item()
                raise AssertionError(f"{what}: {key} differs by {diff:.3g}")
        elif not torch.equal(x, y):
            raise AssertionError(f"{what}: {key} differs")


def mean_of(state_dicts: list[dict[str, Any]]) -> dict[str, Any]:
    """The plain average the toolkits' own scripts compute: float mean, integers from the last."""
    import torch

    out = {}
    for key, last in state_dicts[-1].items():
        if last.is_floating_point():
            acc = torch.zeros_like(last, dtype=torch.float64)
            for sd in state_dicts:
                acc += sd[key].double()
            out[key] = (acc / len(state_dicts)).to(last.dtype)
        else:
            out[key] = last.clone()
    return out
