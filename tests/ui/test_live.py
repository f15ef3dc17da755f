"""Live: a checkpoint that training writes while the app is open appears, in progress until it is
complete, and the folder totals follow; the cursor and the marks stay where they were."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_app import settle, text_of

from ckpttui.ui import live
from ckpttui.ui.app import CkptApp, make_app
from ckpttui.ui.widgets.folder_view import FolderView
from ckpttui.ui.widgets.tree import CheckpointTree


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Poll every 0.1 s instead of 2 s, so the tests wait for conditions, not for the clock."""
    monkeypatch.setattr(live, "INTERVAL", 0.1)


async def wait_for(app: CkptApp, pilot: Any, what: str, cond: Callable[[], bool]) -> None:
    """Let the app run until `cond` holds (at most 30 s: the machine may be loaded)."""
    for _ in range(600):
        await pilot.pause()
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def run_folder(tk_root: Path, tmp_path: Path) -> tuple[Path, bytes]:
    """A FunASR run with two epochs written, and the bytes of a third one to write."""
    run = tmp_path / "exp"
    run.mkdir()
    for name in ("model.pt.ep1", "model.pt.ep2"):
        shutil.copy(tk_root / "funasr" / name, run / name)
    return run, (tk_root / "funasr" / "model.pt.ep3").read_bytes()


def scanned(folder: FolderView, path: Path) -> bool:
    """The folder view lists `path`, scanned."""
    stats = folder.stats.get(str(path))
    return stats is not None and stats.scanned


def done(folder: FolderView, path: Path) -> bool:
    """The folder view shows `path` scanned and complete, and nothing is being written."""
    stats = folder.stats.get(str(path))
    return (
        stats is not None
        and stats.scanned
        and not stats.incomplete
        and not folder.writing
        and all(s.scanned for s in folder.stats.values())
    )


async def test_a_checkpoint_written_while_open_appears_then_completes(
    tk_root: Path, tmp_path: Path
) -> None:
    run, data = run_folder(tk_root, tmp_path)
    ep1, ep2, ep3 = (run / f"model.pt.ep{n}" for n in (1, 2, 3))
    app = make_app(str(run))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        folder = app.query_one(FolderView)
        tree = app.query_one(CheckpointTree)
        assert "live" in text_of(app.query_one("#folder-totals")).splitlines()[0]
        assert "2 checkpoints" in text_of(app.query_one("#folder-totals"))
        tree.marked = (str(ep1),)
        folder.select_path(str(ep2))

        # Training starts writing epoch 3: it appears, in progress.
        with open(ep3, "wb") as fh:
            fh.write(data[: len(data) // 2])
        await wait_for(
            app,
            pilot,
            "ep3 listed as in progress",
            lambda: scanned(folder, ep3) and str(ep3) in folder.in_progress(),
        )
        totals = text_of(app.query_one("#folder-totals"))
        assert "being written" in totals or "1 incomplete" in totals

        # It is finished: it turns complete, the totals count it, cursor and marks stayed.
        with open(ep3, "ab") as fh:
            fh.write(data[len(data) // 2 :])
        await wait_for(app, pilot, "ep3 complete", lambda: done(folder, ep3))
        await settle(app, pilot)
        totals = text_of(app.query_one("#folder-totals"))
        assert "3 checkpoints" in totals and "incomplete" not in totals
        size = sum(os.path.getsize(p) for p in (ep1, ep2, ep3))
        assert sum(s.size for s in folder.stats.values()) == size
        assert folder.stats[str(ep3)].optimizer == folder.stats[str(ep2)].optimizer > 0
        assert tree.node_of(str(ep3)) is not None
        assert tree.marked == (str(ep1),)
        assert folder.cursor_path == str(ep2)


async def test_a_temporary_name_is_in_progress_until_renamed(tk_root: Path, tmp_path: Path) -> None:
    run, data = run_folder(tk_root, tmp_path)
    temp, ep3 = run / "model.pt.ep3.tmp", run / "model.pt.ep3"
    app = make_app(str(run))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        folder = app.query_one(FolderView)
        temp.write_bytes(data)
        await wait_for(
            app,
            pilot,
            "the temporary file listed as incomplete",
            lambda: str(temp) in folder.stats and folder.stats[str(temp)].incomplete > 0,
        )
        os.replace(temp, ep3)
        await wait_for(app, pilot, "ep3 complete", lambda: done(folder, ep3))
        assert str(temp) not in folder.stats
        assert app.query_one(CheckpointTree).node_of(str(temp)) is None


async def test_p_pauses_and_resumes_live(ui_root: Path) -> None:
    app = make_app(str(ui_root))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        watch = app.query_one(live.LiveWatch)
        await pilot.press("p")
        await pilot.pause()
        assert watch.paused
        assert "paused" in text_of(app.query_one("#folder-totals")).splitlines()[0]
        await pilot.press("p")
        await pilot.pause()
        assert not watch.paused
        assert "live" in text_of(app.query_one("#folder-totals")).splitlines()[0]


async def test_a_deepspeed_tag_is_in_progress_until_latest_names_it(
    ds_root: Path, tmp_path: Path
) -> None:
    run = tmp_path / "z2"
    shutil.copytree(ds_root / "ws2" / "z2_fp32", run)
    new = run / "global_step4"
    app = make_app(str(run))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        folder = app.query_one(FolderView)
        # The engine writes the rank files of a new tag, then `latest` last.
        shutil.copytree(run / "global_step2", new)
        await wait_for(
            app,
            pilot,
            "the new tag listed as incomplete",
            lambda: scanned(folder, new) and folder.stats[str(new)].incomplete > 0,
        )
        (run / "latest").write_text("global_step4")
        await wait_for(app, pilot, "the new tag complete", lambda: done(folder, new))
        assert "incomplete" not in text_of(app.query_one("#folder-totals"))
