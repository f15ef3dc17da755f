"""Jobs from the app: the form, the child process, the jobs pane, cancel, the new file in the tree."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from ckpttui.ui.app import CkptApp, make_app
from ckpttui.ui.screens.job_form import JobForm
from ckpttui.ui.widgets.jobs import JobRow, JobsPane
from ckpttui.ui.widgets.tree import CheckpointTree


async def settle(app: CkptApp, pilot: Any) -> None:
    for _ in range(3):
        await pilot.pause()
        await app.workers.wait_for_complete()
    await pilot.pause()


async def wait_job(app: CkptApp, pilot: Any, timeout: float = 60) -> JobRow:
    for _ in range(int(timeout / 0.1)):
        rows = app.query_one(JobsPane).rows()
        if rows and not rows[-1].running:
            await pilot.pause()
            return rows[-1]
        await asyncio.sleep(0.1)
    raise AssertionError("job did not end")


async def select(app: CkptApp, pilot: Any, name: str) -> None:
    tree = app.query_one(CheckpointTree)
    node = next(n for n in tree.root.children if Path(n.data.path).name == name)
    tree.move_cursor(node)
    await settle(app, pilot)


async def test_merge_from_the_app(ds_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    shutil.copytree(ds_root / "ws2" / "z2_bf16_frozen_tied", root / "zero2")
    app = make_app(str(root))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await select(app, pilot, "zero2")
        await pilot.press("m")
        await pilot.pause()
        assert isinstance(app.screen, JobForm)
        out = Path(app.screen.query_one("#form-output").value)
        assert out == root / "zero2-fp32.safetensors"
        assert "free space" in str(app.screen.query_one("#form-size").content)
        await pilot.press("ctrl+s")
        row = await wait_job(app, pilot)
        assert row.state == "done" and out.exists()
        assert any("verified:" in line for line in row.log_lines)
        await settle(app, pilot)
        names = {Path(n.data.path).name for n in app.query_one(CheckpointTree).root.children}
        assert out.name in names  # the new file appears in the tree


async def test_merge_refuses_a_non_deepspeed_selection(ds_root: Path, tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    app = make_app(str(tmp_path))
    async with app.run_test(notifications=True) as pilot:
        await settle(app, pilot)
        await select(app, pilot, "plain")
        await pilot.press("m")
        await settle(app, pilot)
        assert not isinstance(app.screen, JobForm)
        # what the user sees instead: a warning on screen saying what to select
        toasts = [str(t.render()) for t in app.screen.query("Toast") if t.region.area]
        assert any(t.startswith("Select one of DeepSpeed ZeRO checkpoints") for t in toasts), toasts


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~400 MB of HF safetensors shards: long enough to cancel a job half-way."""
    import torch
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("ui-shards")
    folder = root / "big-model"
    folder.mkdir()
    weight_map = {}
    for i in range(4):
        name = f"model-{i + 1:05d}-of-00004.safetensors"
        tensors = {f"l{i}.{j}.weight": torch.full((1024, 1024), float(j)) for j in range(25)}
        save_file(tensors, folder / name)
        weight_map.update({k: name for k in tensors})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return root


async def test_cancel_a_running_job_leaves_nothing(shards: Path) -> None:
    app = make_app(str(shards))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await select(app, pilot, "big-model")
        await pilot.press("m")
        await pilot.pause()
        out = Path(app.screen.query_one("#form-output").value)
        await pilot.press("ctrl+s")
        pane = app.query_one(JobsPane)
        for _ in range(300):
            rows = pane.rows()
            if rows and rows[0].last is not None and rows[0].last.kind == "progress":
                break
            await asyncio.sleep(0.02)
        await pilot.press("x")
        row = await wait_job(app, pilot)
        assert row.state == "cancelled"
        assert not out.exists()
        assert not [p for p in shards.iterdir() if ".tmp-" in p.name]


def _funasr_run(tk_root: Path, tmp_path: Path) -> Path:
    run = tmp_path / "exp"
    run.mkdir()
    for name in ("model.pt.ep1", "model.pt.ep2", "model.pt.ep3", "model.pt"):
        shutil.copy(tk_root / "funasr" / name, run / name)
    return run


async def test_average_marked_checkpoints(tk_root: Path, tmp_path: Path) -> None:
    import torch
    from expected import load_torch

    run = _funasr_run(tk_root, tmp_path)
    app = make_app(str(run))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await select(app, pilot, "model.pt.ep1")
        await pilot.press("space", "space")  # marks ep1, the cursor moves on, marks ep2
        tree = app.query_one(CheckpointTree)
        assert [Path(p).name for p in tree.marked_paths()] == ["model.pt.ep1", "model.pt.ep2"]
        await pilot.press("a")
        await pilot.pause()
        assert isinstance(app.screen, JobForm)
        out = Path(app.screen.query_one("#form-output").value)
        assert out == run / "average-2.safetensors"
        await pilot.press("ctrl+s")
        row = await wait_job(app, pilot)
        assert row.state == "done", row.log_lines
    from safetensors.torch import load_file

    got = load_file(out)
    a = load_torch(run / "model.pt.ep1")["state_dict"]
    b = load_torch(run / "model.pt.ep2")["state_dict"]
    for key, value in got.items():
        if value.is_floating_point():
            ref = (a[key].double() + b[key].double()) / 2
            assert torch.allclose(value.double(), ref, rtol=1e-6, atol=1e-7), key


async def test_average_last_n_of_a_run_folder(tk_root: Path, tmp_path: Path) -> None:
    run = _funasr_run(tk_root, tmp_path)
    app = make_app(str(run))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("a")
        await pilot.pause()
        assert isinstance(app.screen, JobForm)
        app.screen.query_one("#form-n").value = "2"
        out = Path(app.screen.query_one("#form-output").value)
        await pilot.press("ctrl+s")
        row = await wait_job(app, pilot)
        assert row.state == "done", row.log_lines
        assert out.exists()
        assert "last 2" in " ".join(row.log_lines)


async def test_export_weights_as_bf16(tk_root: Path, tmp_path: Path) -> None:
    import torch
    from expected import load_torch
    from safetensors.torch import load_file

    run = _funasr_run(tk_root, tmp_path)
    app = make_app(str(run))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await select(app, pilot, "model.pt.ep3")
        await pilot.press("e")
        await pilot.pause()
        assert isinstance(app.screen, JobForm)
        app.screen.query_one("#form-dtype").value = "bf16"
        out = Path(app.screen.query_one("#form-output").value)
        await pilot.press("ctrl+s")
        row = await wait_job(app, pilot)
        assert row.state == "done", row.log_lines
    got = load_file(out)
    src = load_torch(run / "model.pt.ep3")["state_dict"]
    assert set(got) == set(src)
    for key, value in got.items():
        expected = src[key].to(torch.bfloat16) if src[key].is_floating_point() else src[key]
        assert torch.equal(value, expected), key
