"""The promises about what is imported: readers never import torch or textual; inspect runs without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import SRC, run_cli, torch_zip_bytes

PROBE = """
import json, sys
import {module}
print(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))
"""


@pytest.mark.parametrize(
    "module",
    [
        "ckpttui.formats",
        "ckpttui.layouts",
        "ckpttui.accounting",
        "ckpttui.inventory",
        "ckpttui.cli",
    ],
)
def test_core_imports_neither_torch_nor_textual(module: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(module=module)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC)},
        check=True,
    )
    loaded = set(json.loads(proc.stdout))
    assert "torch" not in loaded and "textual" not in loaded and "numpy" not in loaded


def test_inspect_runs_with_torch_unimportable(tmp_path: Path) -> None:
    # A `torch` package that raises on import shadows the real one.
    fake = tmp_path / "fake"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text(
        "raise ImportError('torch is not importable here')\n"
    )
    data = tmp_path / "data"
    data.mkdir()
    pkl = (
        b"\x80\x02}q\x00X\x01\x00\x00\x00wq\x01ctorch._utils\n_rebuild_tensor_v2\nq\x02((X\x07"
        b"\x00\x00\x00storageq\x03ctorch\nFloatStorage\nq\x04X\x01\x00\x00\x000q\x05X\x03\x00"
        b"\x00\x00cpuq\x06K\x02tq\x07QK\x00K\x02\x85K\x01\x85\x89ccollections\nOrderedDict\n)"
        b"Rtq\x08Rq\x09s."
    )
    (data / "model.pt").write_bytes(torch_zip_bytes(pkl, {"0": b"\0" * 8}))
    proc = run_cli("inspect", str(data), "--json", env={"PYTHONPATH": f"{fake}:{SRC}"})
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    (f,) = report["files"]
    assert (f["tensors"], f["storage_bytes"], f["categories"]["weights"]["bytes"]) == (1, 8, 8)
    human = run_cli("inspect", str(data), env={"PYTHONPATH": f"{fake}:{SRC}"})
    assert human.returncode == 0 and "model.pt" in human.stdout
