"""The app, driven with Textual's pilot against real checkpoint files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from helpers import SRC, inspect_json
from rich.console import Console
from textual.widgets import Footer

from ckpttui.ui.app import CkptApp, make_app
from ckpttui.ui.screens.help import HelpScreen
from ckpttui.ui.widgets.checkpoint_view import CheckpointView
from ckpttui.ui.widgets.curve import CurveView
from ckpttui.ui.widgets.folder_view import FolderView
from ckpttui.ui.widgets.render import GLYPHS
from ckpttui.ui.widgets.tree import CheckpointTree


def text_of(widget: Any) -> str:
    """What a Static shows, as plain text."""
    console = Console(width=120, record=True, color_system=None)
    console.print(widget.content)
    return console.export_text()


async def settle(app: CkptApp, pilot: Any) -> None:
    """Let every worker finish and every message land."""
    for _ in range(3):
        await pilot.pause()
        await app.workers.wait_for_complete()
    await pilot.pause()


def table_column(app: CkptApp, table_id: str, column: int) -> list[str]:
    table = app.query_one(table_id)
    return [str(table.get_row_at(i)[column]) for i in range(table.row_count)]


def test_opening_the_app_does_not_import_torch(ui_root: Path) -> None:
    code = f"""
import asyncio, json, sys
from ckpttui.ui.app import make_app
async def main():
    app = make_app({str(ui_root)!r})
    async with app.run_test() as pilot:
        await pilot.pause()
        await app.workers.wait_for_complete()
        await pilot.pause()
asyncio.run(main())
print(json.dumps("torch" in sys.modules))
"""
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(SRC)},
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) is False


async def test_funasr_file_breakdown_matches_inspect(ui_root: Path) -> None:
    path = ui_root / "asr-funasr" / "exp" / "model.pt.ep3"
    (ckpt,) = inspect_json(path)["checkpoints"]
    cats = ckpt["categories"]
    total = sum(c["bytes"] for c in cats.values())
    app = make_app(str(path))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        assert app.query_one("#ckpt-tabs").active == "tab-breakdown"
        shown = text_of(app.query_one("#breakdown"))
        from ckpttui.units import human_bytes

        for cat in ("weights", "optimizer"):
            pct = f"{100 * cats[cat]['bytes'] / total:.1f}%"
            row = next(
                line
                for line in shown.splitlines()
                if line.strip().startswith(f"{GLYPHS[cat]} {cat}")
            )
            assert human_bytes(cats[cat]["bytes"]) in row and pct in row, row
        assert app.query_one(CheckpointTree).cursor_node.data.path == str(path)


async def test_expanding_a_deepspeed_folder_shows_its_ranks(ui_root: Path) -> None:
    app = make_app(str(ui_root))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        tree = app.query_one(CheckpointTree)
        run = next(n for n in tree.root.children if n.data.path.endswith("lm-deepspeed-z2"))
        run.expand()
        await settle(app, pilot)
        tag = next(n for n in run.children if n.data.path.endswith("global_step2"))
        assert tag.data.kind == "checkpoint" and "deepspeed" in str(tag.label)
        tag.expand()
        await settle(app, pilot)
        names = {Path(n.data.path).name for n in tag.children}
        assert {
            "zero_pp_rank_0_mp_rank_00_optim_states.pt",
            "zero_pp_rank_1_mp_rank_00_optim_states.pt",
            "mp_rank_00_model_states.pt",
        } <= names
        tree.move_cursor(tag)
        await settle(app, pilot)
        summary = text_of(app.query_one("#summary"))
        assert "zero_stage" in summary and "world_size" in summary


async def test_a_broken_file_shows_its_error_and_the_app_goes_on(ui_root: Path) -> None:
    app = make_app(str(ui_root / "broken" / "model.pt.ep9"))
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        tabs = app.query_one("#ckpt-tabs")
        summary, tensors = app.query_one("#summary"), app.query_one("#tensor-table")
        assert tabs.active == "tab-breakdown"  # what a file that cannot be read opens on
        await pilot.press("1")
        await pilot.pause()
        assert tabs.active == "tab-summary" and summary.region.area and not tensors.region.area
        assert "truncated or damaged zip archive" in text_of(summary)
        await pilot.press("up", "down", "3")
        await settle(app, pilot)
        # the keys still work: the tensors tab is on screen, empty (no tensor is made up)
        assert tabs.active == "tab-tensors" and tensors.region.area and not summary.region.area
        assert tensors.row_count == 0


async def test_folder_view_sorts_and_filters(ui_root: Path) -> None:
    app = make_app(str(ui_root / "asr-funasr" / "exp"))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        folder = app.query_one(FolderView)
        assert folder.sort_by == "size"
        names = table_column(app, "#folder-table", 0)
        assert names[-1].startswith("model.pt.avg2")  # weights only: the smallest
        await pilot.press("s", "s")
        assert folder.sort_by == "name"
        assert table_column(app, "#folder-table", 0) == sorted(names)
        await pilot.press("slash")
        await pilot.press(*"ep1")
        await pilot.pause()
        assert {n.split()[0] for n in table_column(app, "#folder-table", 0)} == {
            "model.pt.ep1",
            "model.pt.ep1.3",
        }
        await pilot.press("escape")
        await pilot.pause()
        assert len(table_column(app, "#folder-table", 0)) == len(names)
        totals = text_of(app.query_one("#folder-totals"))
        assert "optimizer state:" in totals and "reclaimable" in totals


async def test_tensor_filter_and_sort(ui_root: Path) -> None:
    app = make_app(str(ui_root / "asr-funasr" / "exp" / "model.pt.ep2"))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("slash")
        assert app.query_one("#ckpt-tabs").active == "tab-tensors"
        await pilot.press(*"exp_avg_sq")
        await pilot.pause()
        view = app.query_one(CheckpointView)
        parts = [r.part for _, r in view.rows()]
        assert parts and set(parts) == {"exp_avg_sq"}
        assert table_column(app, "#tensor-table", 0)[0].endswith("avg_sq")  # name first
        await pilot.press("escape")
        await pilot.pause()
        by_bytes = [r.name for _, r in view.rows()]
        await pilot.press("s")
        await pilot.pause()
        by_name = [r.name for _, r in view.rows()]  # the order the table now shows
        assert len(by_name) > 1 and by_name != by_bytes and sorted(by_name) == sorted(by_bytes)


async def test_training_curve_of_a_run(ui_root: Path) -> None:
    app = make_app(str(ui_root / "asr-funasr" / "exp"))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("c")
        await settle(app, pilot)
        curve = app.query_one(CurveView).curve
        assert curve is not None and not curve.empty
        assert {s.name for s in curve.series} >= {"val_acc"}
        assert len(curve.checkpoints) >= 4
        assert "best" in text_of(app.query_one("#curve-note"))


def footer_shown(app: CkptApp) -> set[str]:
    """The footer's keys as the user reads them: each wholly on screen and not covered."""
    screen = app.screen
    shown = set()
    for key in app.query_one(Footer).query("FooterKey"):
        r = key.region
        on_screen = r.area > 0 and r.right <= screen.size.width
        if on_screen and all(screen.get_widget_at(x, r.y)[0] is key for x in range(r.x, r.right)):
            shown.add(" ".join(str(key.render()).split()))
    return shown


async def test_footer_shows_the_job_keys_at_80_columns(tmp_path: Path) -> None:
    app = make_app(str(tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        assert {"q Quit", "? Help", "m Merge", "a Avg", "e Export"} <= footer_shown(app)


async def test_help_and_command_palette(ui_root: Path) -> None:
    app = make_app(str(ui_root))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        titles = {c.title.split("  [")[0] for c in app.get_system_commands(app.screen)}
        assert {"Help", "Filter", "Sort", "Refresh", "Training curve", "Breakdown tab"} <= titles
        assert {
            "q Quit",
            "? Help",
            "/ Filter",
            "s Sort",
            "m Merge",
            "a Avg",
            "e Export",
        } <= footer_shown(app)
