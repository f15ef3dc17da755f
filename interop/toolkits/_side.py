"""The toolkit side of a round trip: runs inside the toolkit's venv (``tk_NAME.py train|check``).

``train WORK`` trains the tiny model with the toolkit's own entry point into WORK; ``check WORK
LOADER...`` runs each ``load_LOADER(work)``, which loads ckpttui's output with the toolkit's own
loader and compares values, and prints its verdict.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

VERDICT = "@@verdict "


def _verdict(exc: BaseException) -> str:
    """One line: the exception type, its first line, and where it was raised."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}{where}"


def main(namespace: dict[str, Any]) -> None:
    """Dispatch ``train WORK`` / ``check WORK LOADER...`` to the calling module's functions.

    ``check`` runs every named loader in this one process (one toolkit import for all) and prints
    one ``@@verdict {json}`` line per loader.
    """
    args = sys.argv[1:]
    if args[:1] == ["train"] and len(args) == 2:
        try:
            detail = namespace["train"](Path(args[1]))
        except Exception as exc:  # the verdict line names the toolkit's own error
            traceback.print_exc()
            print(f"\n{_verdict(exc)}")
            sys.exit(1)
        print(f"\n{detail or 'ok'}")
    elif args[:1] == ["check"] and len(args) >= 3:
        work = Path(args[1])
        for loader in args[2:]:
            fn: Callable[[Path], str] = namespace[f"load_{loader}"]
            try:
                result = {"loader": loader, "ok": True, "detail": fn(work) or "ok"}
            except Exception as exc:  # each loader's own error is its verdict
                traceback.print_exc()
                result = {"loader": loader, "ok": False, "detail": _verdict(exc)}
            print(VERDICT + json.dumps(result), flush=True)
    else:
        print("usage: tk_NAME.py train WORK | check WORK LOADER...", file=sys.stderr)
        sys.exit(2)


def settled_copy(src: Path, dst: Path) -> Path:
    """A fresh copy of a run folder for reclaim to slim in place, dated an hour back (settled).

    Runs in the driver (standard library only): reclaim refuses files modified seconds ago.
    """
    import os
    import shutil
    import time

    if dst.exists():
        shutil.rmtree(dst)
    if src.is_dir():
        shutil.copytree(src, dst, symlinks=True)
        old = time.time() - 3600
        for p in dst.rglob("*"):
            os.utime(p, (old, old), follow_symlinks=False)
    return dst


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
