"""The benchmarks' child-process runner: one method in a fresh interpreter, timed from outside.

A method is Python source run with ``python -c``; it ends with `report` (or `HWM`), which prints
one ``BENCH_RESULT <json>`` line (by default the child's peak RSS, ``VmHWM``, in bytes) that
`run_child` parses. The child imports ckpttui from this checkout (``src`` on ``PYTHONPATH``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parents[1] / "src"
MARK = "BENCH_RESULT "


def report(expr: str = "hwm * 1024") -> str:
    """Source that prints `expr` (``hwm`` is VmHWM in KiB) as the child's result line."""
    return (
        "import json\n"
        "hwm = int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])\n"
        f"print({MARK!r} + json.dumps({expr}), flush=True)\n"
    )


HWM = report()
"""The usual ending: peak RSS in bytes."""


def child_env(**extra: str) -> dict[str, str]:
    """This environment, no GPU, ckpttui importable from this checkout, plus `extra`."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def remove(path: Path) -> None:
    """Remove a previous run's output, file or folder."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def run_child(
    code: str, names: dict[str, Any] | None = None, env: dict[str, str] | None = None
) -> tuple[float, Any]:
    """(wall seconds, parsed result line) of `code` run in a fresh process after ``sync``.

    `names` are set as globals before the code runs (paths as strings).
    """
    head = "".join(
        f"{k} = {(str(v) if isinstance(v, Path) else v)!r}\n" for k, v in (names or {}).items()
    )
    os.sync()  # the previous run's dirty pages are not this run's work
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", head + code],
        capture_output=True,
        text=True,
        env=env if env is not None else child_env(),
        stdin=subprocess.DEVNULL,
        check=False,
    )
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        )
    return wall, json.loads(lines[-1][len(MARK) :])
