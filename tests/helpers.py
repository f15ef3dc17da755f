"""Small helpers shared by tests: build hostile files by hand, run the CLI."""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parents[1] / "src"


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m ckpttui ARGS`` in a child process."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(SRC) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "ckpttui", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=300,
    )


def inspect_json(path: Path, **kw: Any) -> dict[str, Any]:
    """``ckpttui inspect PATH --json`` parsed; fails the test on a non-zero exit."""
    proc = run_cli("inspect", str(path), "--json", **kw)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def torch_zip_bytes(
    pickle_bytes: bytes, storages: dict[str, bytes] | None = None, root: str = "archive"
) -> bytes:
    """A zip laid out like torch.save's (torch/serialization.py `_save`), around a given data.pkl."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr(f"{root}/data.pkl", pickle_bytes)
        z.writestr(f"{root}/byteorder", "little")
        for key, data in (storages or {}).items():
            z.writestr(f"{root}/data/{key}", data)
        z.writestr(f"{root}/version", "3\n")
    return buf.getvalue()


class RunsCode:
    """Unpickling this object calls os.system (what an attacker puts in a checkpoint)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


class EvalsCode:
    """Unpickling this object calls builtins.eval."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


def malicious_pickle(marker: Path, kind: str = "system") -> bytes:
    """A protocol-2 pickle of a state dict whose unpickling would create `marker`."""
    payload = RunsCode(marker) if kind == "system" else EvalsCode(marker)
    return pickle.dumps({"state_dict": {}, "payload": payload}, protocol=2)
