"""The promises about what is imported: readers never import torch or textual; inspect runs without torch.

One parametrised list (harlequin's test_import_hygiene.py): each entry imports a package with every
submodule under it (or starts the app) in a fresh interpreter and names what must not be loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import SRC, run_cli, torch_zip_bytes

# What the readers (headers, pickles, folder layouts) must run without.
HEADLESS = ("torch", "textual", "rich", "numpy")

# Imports MODULE and, for a package, every module below it; prints the top-level modules loaded.
PROBE = """
import importlib, json, pkgutil, sys
module = importlib.import_module(sys.argv[1])
for info in pkgutil.walk_packages(getattr(module, "__path__", []), module.__name__ + "."):
    importlib.import_module(info.name)
print(json.dumps({"loaded": sorted({m.split(".")[0] for m in sys.modules}), "shown": []}))
"""

# Starts the app headless on a folder, opens every folder in the tree, prints what the tree shows.
APP_START = """
import asyncio, json, sys
from ckpttui.ui.app import make_app
from ckpttui.ui.widgets.tree import CheckpointTree
shown = []
async def main():
    app = make_app(sys.argv[1])
    async with app.run_test() as pilot:
        for _ in range(3):
            await pilot.pause()
            await app.workers.wait_for_complete()
        tree = app.query_one(CheckpointTree)
        tree.root.expand_all()
        for _ in range(3):
            await pilot.pause()
            await app.workers.wait_for_complete()
        stack = [tree.root]
        while stack:
            node = stack.pop()
            shown.append(str(node.label))
            stack.extend(node.children)
asyncio.run(main())
print(json.dumps({"loaded": sorted({m.split(".")[0] for m in sys.modules}), "shown": shown}))
"""

BOUNDARIES = [
    pytest.param("ckpttui.formats", HEADLESS, id="formats"),
    pytest.param("ckpttui.layouts", HEADLESS, id="layouts"),
    pytest.param("ckpttui.accounting", HEADLESS, id="accounting"),
    pytest.param("ckpttui.inventory", HEADLESS, id="inventory"),
    pytest.param("ckpttui.curves", HEADLESS, id="curves"),
    pytest.param("ckpttui.records", HEADLESS, id="records"),
    pytest.param("ckpttui.cli", HEADLESS, id="cli"),
    pytest.param("ckpttui.errors", HEADLESS, id="errors"),
    pytest.param("ckpttui.textreport", ("torch", "textual"), id="textreport"),
    pytest.param("ckpttui.jobs", ("textual", "rich"), id="jobs"),
    pytest.param("ckpttui.jobcli", ("textual", "rich"), id="jobcli"),
    # reclaim's plan runs in the app's worker threads: headers and pickles only
    pytest.param("ckpttui.jobs.reclaim", ("torch", "textual", "rich"), id="reclaim-plan"),
    pytest.param("ckpttui.reclaimcli", ("torch", "textual", "rich"), id="reclaimcli"),
    # The demo's parent side: the writers import torch only in their child processes.
    pytest.param("ckpttui.demo", ("torch", "textual", "transformers", "deepspeed"), id="demo"),
    pytest.param("ckpttui.ui", ("torch",), id="ui-modules"),
    pytest.param("app start", ("torch",), id="app-start"),
]


def _probe(what: str, folder: Path) -> dict[str, list[str]]:
    """Run the probe for `what` in a fresh interpreter that sees only src/ on its path."""
    code, arg = (APP_START, str(folder)) if what == "app start" else (PROBE, what)
    proc = subprocess.run(
        [sys.executable, "-c", code, arg],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC)},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, list[str]] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize(("what", "forbidden"), BOUNDARIES)
def test_import_boundary(what: str, forbidden: tuple[str, ...], tmp_path: Path) -> None:
    folder = tmp_path / "experiments" / "run"
    folder.mkdir(parents=True)
    (folder / "model.pt").write_bytes(torch_zip_bytes(_ONE_TENSOR_PICKLE, {"0": b"\0" * 8}))
    result = _probe(what, tmp_path / "experiments")
    assert sorted(set(forbidden) & set(result["loaded"])) == []
    if what == "app start":  # it did start: the tree lists the folder's checkpoint
        assert any("model.pt" in label for label in result["shown"]), result["shown"]


# {"w": FloatStorage tensor of 2 elements}, pickled as torch.save writes it.
_ONE_TENSOR_PICKLE = (
    b"\x80\x02}q\x00X\x01\x00\x00\x00wq\x01ctorch._utils\n_rebuild_tensor_v2\nq\x02((X\x07"
    b"\x00\x00\x00storageq\x03ctorch\nFloatStorage\nq\x04X\x01\x00\x00\x000q\x05X\x03\x00"
    b"\x00\x00cpuq\x06K\x02tq\x07QK\x00K\x02\x85K\x01\x85\x89ccollections\nOrderedDict\n)"
    b"Rtq\x08Rq\x09s."
)


def test_inspect_runs_with_torch_unimportable(tmp_path: Path) -> None:
    # A `torch` package that raises on import shadows the real one.
    fake = tmp_path / "fake"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text(
        "raise ImportError('torch is not importable here')\n"
    )
    data = tmp_path / "data"
    data.mkdir()
    (data / "model.pt").write_bytes(torch_zip_bytes(_ONE_TENSOR_PICKLE, {"0": b"\0" * 8}))
    proc = run_cli("inspect", str(data), "--json", env={"PYTHONPATH": f"{fake}:{SRC}"})
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    (f,) = report["files"]
    assert (f["tensors"], f["storage_bytes"], f["categories"]["weights"]["bytes"]) == (1, 8, 8)
    human = run_cli("inspect", str(data), env={"PYTHONPATH": f"{fake}:{SRC}"})
    assert human.returncode == 0 and "model.pt" in human.stdout
