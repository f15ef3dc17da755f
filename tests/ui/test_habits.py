"""The habits of ncdu, lazygit and k9s, each shown by driving the app with Textual's pilot."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from ckpttui.browse import list_dir
from ckpttui.curves import build_curve, scale_groups, split_runs
from ckpttui.inventory import scan
from ckpttui.jobs.events import Event
from ckpttui.jobs.runner import JobSpec
from ckpttui.ui.app import CkptApp, make_app
from ckpttui.ui.jobrequest import JobRequestError, request_for
from ckpttui.ui.screens.confirm import ConfirmScreen
from ckpttui.ui.screens.job_form import JobForm
from ckpttui.ui.widgets.checkpoint_view import CheckpointView
from ckpttui.ui.widgets.folder_view import FolderView, natural_key, plan_columns
from ckpttui.ui.widgets.jobs import JobRow, JobsPane, humanize
from ckpttui.ui.widgets.render import COLORS, GLYPHS, stacked_bar, use_theme
from ckpttui.ui.widgets.tree import CheckpointTree, NodeData


async def settle(app: CkptApp, pilot: Any) -> None:
    """Let every worker finish and every message land."""
    for _ in range(3):
        await pilot.pause()
        await app.workers.wait_for_complete()
    await pilot.pause()


def text_of(widget: Any) -> str:
    console = Console(width=120, record=True, color_system=None)
    console.print(widget.content)
    return console.export_text()


def child(tree: CheckpointTree, parent: Any, name: str) -> Any:
    return next(n for n in parent.children if n.data and Path(n.data.path).name == name)


async def wait_job(app: CkptApp, pilot: Any, timeout: float = 120) -> JobRow:
    for _ in range(int(timeout / 0.1)):
        rows = app.query_one(JobsPane).rows()
        if rows and not rows[-1].running:
            await settle(app, pilot)
            return rows[-1]
        await asyncio.sleep(0.1)
    raise AssertionError("job did not end")


def _funasr_run(tk_root: Path, tmp_path: Path) -> Path:
    run = tmp_path / "exp"
    run.mkdir()
    for name in ("model.pt.ep1", "model.pt.ep2", "model.pt.ep3", "model.pt"):
        shutil.copy(tk_root / "funasr" / name, run / name)
    return run


# --- the cursor and the marks never move by themselves ----------------------------------------


async def test_cursor_and_marks_stay_on_their_paths_across_a_job(
    tk_root: Path, tmp_path: Path
) -> None:
    run = _funasr_run(tk_root, tmp_path)
    app = make_app(str(run))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        tree = app.query_one(CheckpointTree)
        tree.move_cursor(child(tree, tree.root, "model.pt.ep1"))
        await settle(app, pilot)
        await pilot.press("space", "space")  # marks ep1 and ep2; the cursor is on ep3
        assert [Path(p).name for p in tree.marked] == ["model.pt.ep1", "model.pt.ep2"]
        on_ep3 = tree.cursor_node
        assert Path(on_ep3.data.path).name == "model.pt.ep3"
        await pilot.press("e")
        await pilot.pause()
        assert isinstance(app.screen, JobForm)
        await pilot.press("ctrl+s")
        row = await wait_job(app, pilot)
        assert row.state == "done", row.log_lines
        names = [Path(n.data.path).name for n in tree.root.children]
        assert "model.pt.ep3-weights.safetensors" in names  # the new file is listed...
        assert tree.cursor_node is on_ep3  # ...and the cursor is still on ep3
        assert [Path(p).name for p in tree.marked] == ["model.pt.ep1", "model.pt.ep2"]
        ep1 = child(tree, tree.root, "model.pt.ep1")
        assert tree.render_label(ep1, tree.rich_style, tree.rich_style).plain.startswith("● ")
        assert app.query_one(CheckpointView).path == str(run / "model.pt.ep3")


async def test_folder_list_keeps_its_cursor_when_it_is_reloaded(ui_root: Path) -> None:
    app = make_app(str(ui_root))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        folder = app.query_one(FolderView)
        table = app.query_one("#folder-table")
        assert table.cursor_row == 0  # the first row, not where the scan left it
        await pilot.press("tab", "j")
        on = folder.cursor_path
        assert on is not None
        app._reload_folder(str(ui_root))
        await settle(app, pilot)
        assert folder.cursor_path == on
        assert table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value == on


# --- tree keys ---------------------------------------------------------------------------------


async def test_left_keeps_the_parent_open_and_right_never_parses_a_plain_file(
    ui_root: Path, tmp_path: Path
) -> None:
    root = tmp_path / "runs"
    shutil.copytree(ui_root / "asr-funasr", root / "asr-funasr")
    (root / "asr-funasr" / "exp" / ".done").write_text("")
    app = make_app(str(root))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        tree = app.query_one(CheckpointTree)
        tree.focus()
        run = child(tree, tree.root, "asr-funasr")
        tree.move_cursor(run)
        await pilot.press("l")
        await settle(app, pilot)
        await pilot.press("j", "l")  # down to exp/, open it
        await settle(app, pilot)
        exp = child(tree, run, "exp")
        assert tree.cursor_node is exp and exp.is_expanded
        done = child(tree, exp, ".done")
        tree.move_cursor(done)
        await settle(app, pilot)
        await pilot.press("right")
        await settle(app, pilot)
        assert not done.data.loaded and not done.children  # nothing was read
        assert "empty file" not in text_of(app.query_one("#summary"))
        await pilot.press("left")
        assert tree.cursor_node is exp and exp.is_expanded  # parent reached, left open
        await pilot.press("left")
        assert tree.cursor_node is exp and not exp.is_expanded  # an open node folds
        await pilot.press("h")
        assert tree.cursor_node is run and run.is_expanded
        await pilot.press("k")
        assert tree.cursor_node is tree.root
        await pilot.press("j")
        assert tree.cursor_node is run


async def test_a_plain_file_shows_its_folder_not_a_stale_checkpoint(ui_root: Path) -> None:
    app = make_app(str(ui_root / "broken"))
    (ui_root / "broken" / "notes.txt").write_text("hello")
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(app, pilot)
            tree = app.query_one(CheckpointTree)
            tree.move_cursor(child(tree, tree.root, "model.pt.ep9"))
            await settle(app, pilot)
            tree.move_cursor(child(tree, tree.root, "notes.txt"))
            await settle(app, pilot)
            assert app.query_one("#right").current == "folder-pane"
            folder = app.query_one(FolderView)
            assert folder.cursor_path == str(ui_root / "broken" / "notes.txt")
    finally:
        (ui_root / "broken" / "notes.txt").unlink()


async def test_marking_refuses_files_that_are_not_checkpoints(
    tk_root: Path, tmp_path: Path
) -> None:
    run = _funasr_run(tk_root, tmp_path)
    (run / "config.yaml").write_text("a: 1\n")
    app = make_app(str(run))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        tree = app.query_one(CheckpointTree)
        tree.move_cursor(child(tree, tree.root, "config.yaml"))
        await pilot.press("space")
        assert tree.marked == ()
        tree.move_cursor(child(tree, tree.root, "model.pt.ep2"))
        await pilot.press("space")
        assert [Path(p).name for p in tree.marked] == ["model.pt.ep2"]


async def test_a_key_in_the_tree_lists_its_tensors(ui_root: Path) -> None:
    path = ui_root / "asr-funasr" / "exp" / "model.pt.ep2"
    app = make_app(str(path))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        tree = app.query_one(CheckpointTree)
        node = tree.cursor_node
        node.expand()
        await settle(app, pilot)
        key = next(n for n in node.children if n.data.kind == "key" and n.children is not None)
        key.expand()
        await settle(app, pilot)
        deeper = next(n for n in key.children if n.data.kind == "key")
        tree.move_cursor(deeper)
        await settle(app, pilot)
        view = app.query_one(CheckpointView)
        listed = view.rows()
        assert listed, view.filter_text
        assert all(
            [p for k in r.path for p in k.split(".")][: len(deeper.data.key_path)]
            == list(deeper.data.key_path)
            for _, r in listed
        )


# --- the list ----------------------------------------------------------------------------------


async def test_enter_drills_into_the_list_and_backspace_goes_up(ui_root: Path) -> None:
    app = make_app(str(ui_root))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("tab")
        table = app.query_one("#folder-table")
        assert app.focused is table  # the first tab lands on the list, not the tab strip
        folder = app.query_one(FolderView)
        target = str(ui_root / "asr-funasr")
        table.move_cursor(row=table.get_row_index(target))
        await pilot.press("enter")
        await settle(app, pilot)
        assert folder.path == target and app.focused is table
        assert app.query_one(CheckpointTree).cursor_node.data.path == target
        await pilot.press("backspace")
        await settle(app, pilot)
        assert folder.path == str(ui_root) and folder.cursor_path == target
        assert table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value == target
        await pilot.press("l")  # right drills in too, never scrolls sideways
        await settle(app, pilot)
        assert folder.path == target
        await pilot.press("h")
        await settle(app, pilot)
        assert folder.path == str(ui_root)


async def test_filter_enter_keeps_it_and_moves_to_the_list_esc_clears_it(ui_root: Path) -> None:
    app = make_app(str(ui_root / "asr-funasr" / "exp"))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        folder = app.query_one(FolderView)
        everything = len(folder.rows())
        await pilot.press("slash", *"ep1", "enter")
        await pilot.pause()
        assert app.focused is app.query_one("#folder-table")
        assert {s.entry.name for s in folder.rows()} == {"model.pt.ep1", "model.pt.ep1.3"}
        totals = text_of(app.query_one("#folder-totals"))
        assert "filter 'ep1': 2 of 6" in totals  # totals follow the filter
        await pilot.press("escape")
        await pilot.pause()
        assert folder.filter_text == "" and len(folder.rows()) == everything
        assert app.focused is app.query_one("#folder-table")


async def test_sorts_are_natural_reversible_and_include_reclaimable(tmp_path: Path) -> None:
    for name in ("ep10.bin", "Ep2.bin", "ep1.bin", "ep100.bin", "ep11.bin"):
        (tmp_path / name).write_bytes(b"x" * 10)
    assert sorted(["ep10", "ep2", "EP1"], key=natural_key) == ["EP1", "ep2", "ep10"]
    app = make_app(str(tmp_path))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        folder = app.query_one(FolderView)
        await pilot.press("s")
        assert folder.sort_by == "reclaimable"
        await pilot.press("s")
        assert folder.sort_by == "name"
        names = [s.entry.name for s in folder.rows()]
        assert names == ["ep1.bin", "Ep2.bin", "ep10.bin", "ep11.bin", "ep100.bin"]
        await pilot.press("S")
        assert [s.entry.name for s in folder.rows()] == names[::-1]


async def test_80x24_shows_name_size_reclaimable_and_the_bar(ui_root: Path) -> None:
    app = make_app(str(ui_root))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        folder = app.query_one(FolderView)
        keys = [c.key for c in folder.columns]
        assert keys[:4] == ["name", "size", "reclaim", "bar"]
        table = app.query_one("#folder-table")
        assert table.virtual_size.width <= table.scrollable_content_region.width
    assert [c.key for c in plan_columns(200)][-1] == "step"  # wide terminals get everything


def test_bars_read_without_colour_and_category_colours_are_not_error_colours() -> None:
    bar = stacked_bar(50, 30, 20, 10).plain
    assert GLYPHS["weights"] in bar and GLYPHS["optimizer"] in bar and GLYPHS["other"] in bar
    assert len(set(GLYPHS.values())) == 3
    from textual.theme import BUILTIN_THEMES

    for theme in BUILTIN_THEMES.values():
        use_theme(theme)
        colours = {COLORS[c].lower() for c in ("weights", "optimizer", "other")}
        assert len(colours) == 3, theme.name
        assert str(theme.error).lower().replace("ansi_", "") not in colours, theme.name
    use_theme(BUILTIN_THEMES["textual-dark"])


def test_no_color_keeps_red_warnings_readable(
    ui_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NO_COLOR greys: "4 incomplete" (bold red) stays far from the dark background."""
    from rich.segment import Segment
    from rich.style import Style
    from textual.color import Color
    from textual.filter import Monochrome

    monkeypatch.setenv("NO_COLOR", "1")
    app = make_app(str(ui_root))
    (mono,) = [f for f in app._filters if isinstance(f, Monochrome)]
    background = Color(18, 18, 18)
    warning = [Segment("4 incomplete", Style(color="red", bold=True, bgcolor="grey7"))]

    def contrast(f: Monochrome) -> float:
        (seg,) = f.apply(warning, background)
        assert seg.style is not None and seg.style.color is not None
        assert seg.style.bgcolor is not None
        fg = Color.from_rich_color(seg.style.color).brightness
        return abs(fg - Color.from_rich_color(seg.style.bgcolor).brightness)

    assert contrast(Monochrome()) < 0.2  # Textual's own: grey 237 on 233
    assert contrast(mono) >= 0.35


# --- quitting, jobs, workers ------------------------------------------------------------------


class _SleepingChild:
    """Stands for a running job's child process."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(["sleep", "60"])
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        self.proc.send_signal(signal.SIGTERM)


async def test_q_asks_while_a_job_runs_then_cancels_it_without_blocking(ui_root: Path) -> None:
    app = make_app(str(ui_root))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        pane = app.query_one(JobsPane)
        row = JobRow(99, JobSpec("export", {"src": "a.pt", "out": "b.safetensors"}))
        await pane.mount(row)
        fake = _SleepingChild()
        row.child = fake  # type: ignore[assignment]
        await pilot.press("q")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen) and app.is_running
        await pilot.press("n")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen) and not fake.cancelled
        await pilot.press("q")
        await pilot.pause()
        await pilot.press("y")
        await pilot.pause()
        assert fake.cancelled
        for _ in range(100):
            if not app.is_running:
                break
            await asyncio.sleep(0.05)
        assert not app.is_running
    assert fake.proc.poll() is not None


async def test_a_failing_scan_is_reported(ui_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ckpttui.ui.listing import DiskListing

    def boom(self: Any, path: Any) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(DiskListing, "folder_scan", boom)
    app = make_app(str(ui_root))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        totals = text_of(app.query_one("#folder-totals"))
        assert "scan failed: RuntimeError: disk on fire" in totals
        assert "scanning" not in totals


def test_jobs_show_human_sizes_and_a_failure_before_progress_stops_pulsing() -> None:
    assert humanize("verified: 3 tensors, 486539264 bytes, sha256 ab") == (
        "verified: 3 tensors, 464.0 MiB, sha256 ab"
    )


async def test_a_job_that_fails_at_once_stops_pulsing(ui_root: Path) -> None:
    app = make_app(str(ui_root))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        pane = app.query_one(JobsPane)
        row = JobRow(98, JobSpec("export", {"src": "a.pt", "out": "b.safetensors"}))
        await pane.mount(row)
        row.apply(Event("error", "export", message="a.pt: no such file", data={"cancelled": False}))
        await pilot.pause()
        from textual.widgets import ProgressBar

        assert row.state == "failed" and row.query_one(ProgressBar).total == 1
        assert "a.pt: no such file" in text_of(row.query_one(".job-result"))


# --- forms and explanations ---------------------------------------------------------------------


async def test_export_form_previews_inputs_and_the_size_for_the_chosen_dtype(
    tk_root: Path, tmp_path: Path
) -> None:
    run = _funasr_run(tk_root, tmp_path)
    app = make_app(str(run / "model.pt.ep3"))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("e")
        await settle(app, pilot)
        form = app.screen
        assert isinstance(form, JobForm)
        await form.workers.wait_for_complete()
        await pilot.pause()
        keep = form.preview.estimate
        assert keep > 0 and form.preview.reads[0][0] == str(run / "model.pt.ep3")
        form.query_one("#form-dtype").value = "bf16"
        await pilot.pause()
        await form.workers.wait_for_complete()
        await pilot.pause()
        assert form.preview.estimate == pytest.approx(keep / 2, rel=0.01)
        from ckpttui.units import human_bytes

        assert human_bytes(form.preview.estimate) in text_of(form.query_one("#form-size"))
        assert "model.pt.ep3" in text_of(form.query_one("#form-reads"))


async def test_average_form_names_the_checkpoints_it_will_average(
    tk_root: Path, tmp_path: Path
) -> None:
    run = _funasr_run(tk_root, tmp_path)
    app = make_app(str(run))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("a")
        await pilot.pause()
        form = app.screen
        assert isinstance(form, JobForm)
        form.query_one("#form-n").value = "2"
        await pilot.pause()
        await form.workers.wait_for_complete()
        await pilot.pause()
        reads = text_of(form.query_one("#form-reads"))
        assert "model.pt.ep2" in reads and "model.pt.ep3" in reads and "ep1" not in reads
        assert form.preview.estimate > 0


async def test_deepspeed_folder_is_explained_and_a_rank_file_shows_its_layout(
    ui_root: Path,
) -> None:
    app = make_app(str(ui_root / "lm-deepspeed-z2" / "global_step2" / "mp_rank_00_model_states.pt"))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("1")
        summary = text_of(app.query_one("#summary"))
        assert "layout" in summary and "deepspeed" in summary and "layout     torch" not in summary
        assert "Press m" in summary


def test_merge_on_a_model_only_deepspeed_folder_says_what_to_do(
    ds_root: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "epoch_3.pt"
    shutil.copytree(ds_root / "ws2" / "z2_fp32", folder)
    for p in folder.rglob("*optim_states.pt"):
        p.unlink()
    tag = next(p for p in folder.iterdir() if p.is_dir())
    selected = NodeData("checkpoint", str(tag))
    with pytest.raises(JobRequestError, match="model states only.*press e"):
        request_for("merge", selected, [], CheckpointView())


async def test_palette_entries_show_their_keys(ui_root: Path) -> None:
    app = make_app(str(ui_root))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        titles = {c.title for c in app.get_system_commands(app.screen)}
    assert "Merge  [m]" in titles and "Reverse sort  [S]" in titles and "Help  [?]" in titles


# --- sizes and names ----------------------------------------------------------------------------


async def test_hardlinks_are_counted_once(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "links").mkdir(parents=True)
    (root / "data.bin").write_bytes(b"x" * 100_000)
    for i in range(50):
        os.link(root / "data.bin", root / "links" / f"h{i}.bin")
    app = make_app(str(root))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        folder = app.query_one(FolderView)
        assert sum(s.size for s in folder.stats.values()) == 100_000


def test_a_dangling_symlink_is_not_called_a_loop(tmp_path: Path) -> None:
    (tmp_path / "loop-data.pt").symlink_to(tmp_path / "gone")
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    errors = {e.name: e.error for e in list_dir(str(tmp_path))}
    assert errors == {"loop-data.pt": "dangling symlink", "a": "symlink loop", "b": "symlink loop"}


def test_curves_are_split_by_run_and_by_scale(ui_root: Path) -> None:
    inv = scan(ui_root)
    runs = split_runs(inv)
    assert len(runs) >= 2  # the FunASR run and the DeepSpeed run are not mixed
    funasr = next(build_curve(sub) for folder, sub in runs if folder.endswith("exp"))
    assert funasr.x_label == "epoch"
    groups = [{s.name for s in g} for g in scale_groups(funasr)]
    assert {"val_acc"} in groups and {"val_loss"} in groups  # never on one axis


async def test_the_list_has_a_metric_column_and_the_curve_leads_to_the_best_file(
    ui_root: Path,
) -> None:
    run = ui_root / "asr-funasr" / "exp"
    app = make_app(str(run))
    async with app.run_test(size=(160, 40)) as pilot:
        await settle(app, pilot)
        folder = app.query_one(FolderView)
        assert "metric" in [c.key for c in folder.columns]
        ep3 = folder.stats[str(run / "model.pt.ep3")]
        assert ep3.metric is not None and ep3.metric[0] in ("val_acc", "val_loss")
        await pilot.press("c")
        await settle(app, pilot)
        await pilot.press("b")
        await settle(app, pilot)
        tree = app.query_one(CheckpointTree)
        curve = app.query_one("CurveView").curve
        from ckpttui.curves import best_point, checkpoint_near

        best = checkpoint_near(curve, best_point(curve, curve.series[0])[0])
        assert tree.cursor_node.data.path == str(run / best)
        assert app.focused is tree
