"""Regenerate the SVG screenshots in this folder from the demo experiments tree.

./dev ckpttui demo --no-open      # once: writes the demo folder
.venv/bin/python screenshots/make_screenshots.py               # all of them
.venv/bin/python screenshots/make_screenshots.py diff-view     # only the ones named
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from ckpttui.demo import ensure_demo
from ckpttui.ui.app import make_app


async def _shot(
    path: Path,
    name: str,
    keys: tuple[str, ...] = (),
    size: tuple[int, int] = (120, 40),
    before: Any = None,
) -> None:
    if sys.argv[1:] and name not in sys.argv[1:]:
        return
    app = make_app(str(path))
    async with app.run_test(size=size) as pilot:
        for _ in range(3):
            await pilot.pause()
            await app.workers.wait_for_complete()
        if before is not None:
            await before(app, pilot)
        if keys:
            await pilot.press(*keys)
            for _ in range(3):
                await pilot.pause()
                await app.workers.wait_for_complete()
        app.save_screenshot(str(HERE / f"{name}.svg"))
    print(f"wrote {HERE / name}.svg")


async def _jobs(app: Any, pilot: Any) -> None:
    """Run a merge and an export from the app, writing into a temporary folder."""
    import asyncio
    import tempfile

    from ckpttui.ui.widgets.jobs import JobsPane
    from ckpttui.ui.widgets.tree import CheckpointTree

    out = Path(tempfile.mkdtemp(prefix="ckpttui-shots-"))
    tree = app.query_one(CheckpointTree)
    for name, key, target in (
        ("lm-deepspeed-zero2", "m", "zero2-fp32.safetensors"),
        ("asr-paraformer-funasr", "e", None),
    ):
        node = next(n for n in tree.root.children if Path(n.data.path).name == name)
        tree.move_cursor(node)
        await pilot.pause()
        if target is None:  # export: the FunASR epoch file inside exp/
            node.expand()
            await app.workers.wait_for_complete()
            await pilot.pause()
            exp = node.children[0]
            exp.expand()
            await app.workers.wait_for_complete()
            await pilot.pause()
            ep = next(n for n in exp.children if Path(n.data.path).name == "model.pt.ep5")
            tree.move_cursor(ep)
            await pilot.pause()
            target = "model.pt.ep5-weights.safetensors"
        await pilot.press(key)
        await pilot.pause()
        app.screen.query_one("#form-output").value = str(out / target)
        await pilot.press("ctrl+s")
        await pilot.pause()
    for _ in range(600):
        if all(not r.running for r in app.query_one(JobsPane).rows()):
            break
        await asyncio.sleep(0.1)
    await pilot.pause()


async def _export_form(app: Any, pilot: Any) -> None:
    """Open the export form on a FunASR epoch and choose bf16: the preview follows."""
    await pilot.press("e")
    await pilot.pause()
    form = app.screen
    form.query_one("#form-dtype").value = "bf16"
    for _ in range(3):
        await pilot.pause()
        await form.workers.wait_for_complete()


async def _wait_jobs(app: Any, pilot: Any) -> None:
    from ckpttui.ui.widgets.jobs import JobsPane

    for _ in range(600):
        if all(not r.running for r in app.query_one(JobsPane).rows()):
            break
        await asyncio.sleep(0.1)
    for _ in range(3):
        await pilot.pause()
        await app.workers.wait_for_complete()


async def _diff(app: Any, pilot: Any) -> None:
    """Mark the first and the last WeNet epochs (space), press D: the diff job, then its view."""
    from ckpttui.ui.widgets.tree import CheckpointTree

    tree = app.query_one(CheckpointTree)
    for name in ("epoch_0.pt", "epoch_4.pt"):
        node = next(n for n in tree.root.children if Path(n.data.path).name == name)
        tree.move_cursor(node)
        await pilot.pause()
        await pilot.press("space")
    await pilot.press("D")
    await pilot.pause()
    await _wait_jobs(app, pilot)


async def _reclaim(app: Any, pilot: Any) -> None:
    """d on the FunASR run folder: the plan (computed in a worker)."""
    await pilot.press("d")
    for _ in range(3):
        await pilot.pause()
        await app.screen.workers.wait_for_complete()


async def main() -> None:
    """Folder view (80x24 and 120x40), breakdown, curve, DeepSpeed folder, export form, jobs,
    the reclaim plan and the diff view."""
    demo = ensure_demo()
    await _shot(demo, "folder-view")
    await _shot(demo, "folder-view-80x24", size=(80, 24))
    await _shot(demo / "asr-paraformer-funasr" / "exp" / "model.pt.ep3", "funasr-breakdown")
    await _shot(demo / "asr-paraformer-funasr" / "exp", "training-curve", keys=("c",))
    await _shot(demo / "lm-gpt2-hf-trainer" / "checkpoint-6", "hf-checkpoint-summary", keys=("1",))
    await _shot(demo / "lm-deepspeed-zero2" / "global_step2", "deepspeed-folder", size=(80, 24))
    await _shot(
        demo / "asr-paraformer-funasr" / "exp" / "model.pt.ep3",
        "export-form",
        size=(80, 24),
        before=_export_form,
    )
    await _shot(demo, "jobs-pane", before=_jobs)
    await _shot(demo / "asr-paraformer-funasr" / "exp", "reclaim-plan", before=_reclaim)
    await _shot(demo / "asr-conformer-wenet" / "exp", "diff-view", before=_diff)


if __name__ == "__main__":
    asyncio.run(main())
