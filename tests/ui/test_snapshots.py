"""Snapshot tests of the screens (pytest-textual-snapshot), grouped by feature, at 80x24 and 120x40.

Each is named for what the user sees. Update after an intended change, and look at the SVGs:
    ./dev test tests/ui/test_snapshots.py --snapshot-update
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ckpttui.jobs.runner import JobSpec
from ckpttui.ui.app import make_app

SIZES = [(80, 24), (120, 40)]
sizes = pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")


async def _settle(pilot: Any) -> None:
    for _ in range(3):
        await pilot.pause()
        await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def _then(*keys: str) -> Any:
    async def run(pilot: Any) -> None:
        await _settle(pilot)
        if keys:
            await pilot.press(*keys)
            await _settle(pilot)

    return run


class TestFolderView:
    """The ncdu-like list: sizes, reclaimable bytes, the weights / optimizer / other bar."""

    @sizes
    def test_lists_runs_by_size_with_optimizer_share(
        self, snap_compare: Any, ui_root: Path, size: tuple[int, int]
    ) -> None:
        assert snap_compare(make_app(str(ui_root)), terminal_size=size, run_before=_then())

    @sizes
    def test_filtered_by_name_with_totals_of_the_match(
        self, snap_compare: Any, ui_root: Path, size: tuple[int, int]
    ) -> None:
        app = make_app(str(ui_root / "asr-funasr" / "exp"))
        keys = ("slash", "e", "p", "1", "enter")
        assert snap_compare(app, terminal_size=size, run_before=_then(*keys))

    @sizes
    def test_sorted_by_name_reversed(
        self, snap_compare: Any, ui_root: Path, size: tuple[int, int]
    ) -> None:
        app = make_app(str(ui_root / "asr-funasr" / "exp"))
        assert snap_compare(app, terminal_size=size, run_before=_then("s", "s", "S"))


class TestCheckpoint:
    """One checkpoint: Summary and Breakdown tabs."""

    @sizes
    def test_funasr_epoch_breakdown_shows_weights_and_optimizer(
        self, snap_compare: Any, ui_root: Path, size: tuple[int, int]
    ) -> None:
        app = make_app(str(ui_root / "asr-funasr" / "exp" / "model.pt.ep3"))
        assert snap_compare(app, terminal_size=size, run_before=_then())

    @sizes
    def test_deepspeed_rank_file_summary_shows_the_folder_layout(
        self, snap_compare: Any, ui_root: Path, size: tuple[int, int]
    ) -> None:
        path = ui_root / "lm-deepspeed-z2" / "global_step2" / "mp_rank_00_model_states.pt"
        assert snap_compare(make_app(str(path)), terminal_size=size, run_before=_then("1"))

    @sizes
    def test_deepspeed_folder_explains_merge(
        self, snap_compare: Any, ui_root: Path, size: tuple[int, int]
    ) -> None:
        app = make_app(str(ui_root / "lm-deepspeed-z2" / "global_step2"))
        assert snap_compare(app, terminal_size=size, run_before=_then())


class TestCurve:
    """Training curves: one run, accuracy and loss on separate plots."""

    @sizes
    def test_funasr_run_training_curve(
        self, snap_compare: Any, ui_root: Path, size: tuple[int, int]
    ) -> None:
        app = make_app(str(ui_root / "asr-funasr" / "exp"))
        assert snap_compare(app, terminal_size=size, run_before=_then("c"))


class TestScreens:
    """Help, the job form, the quit question."""

    @sizes
    def test_help_screen(self, snap_compare: Any, ui_root: Path, size: tuple[int, int]) -> None:
        assert snap_compare(
            make_app(str(ui_root)), terminal_size=size, run_before=_then("question_mark")
        )

    @sizes
    def test_export_form_previews_reads_and_bf16_size(
        self,
        snap_compare: Any,
        ui_root: Path,
        size: tuple[int, int],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        from collections import namedtuple

        import ckpttui.ui.screens.job_form as job_form

        usage = namedtuple("usage", "total used free")
        monkeypatch.setattr(job_form.shutil, "disk_usage", lambda _p: usage(1, 1, 100 * 2**30))
        app = make_app(str(ui_root / "asr-funasr" / "exp" / "model.pt.ep3"))

        async def run(pilot: Any) -> None:
            await _settle(pilot)
            await pilot.press("e")
            await _settle(pilot)
            form = pilot.app.screen
            form.query_one("#form-output").value = "model.pt.ep3-weights.safetensors"
            form.query_one("#form-dtype").value = "bf16"
            await _settle(pilot)
            await form.workers.wait_for_complete()
            await _settle(pilot)

        assert snap_compare(app, terminal_size=size, run_before=run)

    @sizes
    def test_quit_asks_while_a_job_runs(
        self, snap_compare: Any, ui_root: Path, size: tuple[int, int]
    ) -> None:
        from ckpttui.ui.widgets.jobs import JobRow, JobsPane

        app = make_app(str(ui_root))

        async def run(pilot: Any) -> None:
            await _settle(pilot)
            pane = pilot.app.query_one(JobsPane)
            await pane.mount(JobRow(7, JobSpec("merge", {"src": "global_step2", "out": "m.pt"})))
            await pilot.press("q")
            await _settle(pilot)

        assert snap_compare(app, terminal_size=size, run_before=run)


class TestJobViews:
    """What v, D and d show: the diff view and the reclaim plan."""

    @pytest.fixture(scope="class")
    def diff_report(self, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
        from test_appjobs import make_run

        from ckpttui.jobs.diff import diff

        run = make_run(tmp_path_factory.mktemp("snapdiff") / "run")
        events = list(diff(run / "step1.pt", run / "step2.pt"))
        return run, events[-1].data

    @sizes
    def test_diff_view_sorted_by_change_with_frozen_modules(
        self, snap_compare: Any, diff_report: tuple[Path, dict[str, Any]], size: tuple[int, int]
    ) -> None:
        from ckpttui.ui.screens.diff import DiffScreen

        run, report = diff_report
        app = make_app(str(run))

        async def show(pilot: Any) -> None:
            await _settle(pilot)
            await pilot.app.push_screen(DiffScreen(report, str(run.parent)))
            await _settle(pilot)

        assert snap_compare(app, terminal_size=size, run_before=show)

    @pytest.fixture(scope="class")
    def old_run(self, ui_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
        from test_appjobs import old_copy

        root = tmp_path_factory.mktemp("snapreclaim") / "runs"
        root.mkdir()
        old_copy(ui_root / "asr-funasr" / "exp", root / "exp")
        return root

    @sizes
    def test_reclaim_plan_keeps_newest_and_best(
        self, snap_compare: Any, old_run: Path, size: tuple[int, int]
    ) -> None:
        pytest.importorskip("ckpttui.jobs.reclaim")
        app = make_app(str(old_run / "exp"))

        async def plan(pilot: Any) -> None:
            await _settle(pilot)
            await pilot.press("d")
            await _settle(pilot)
            await pilot.app.screen.workers.wait_for_complete()
            await _settle(pilot)

        assert snap_compare(app, terminal_size=size, run_before=plan)
