"""Snapshot tests of the main screens (pytest-textual-snapshot), named for what the user sees.

Update after an intended change with: ./dev test tests/ui/test_snapshots.py --snapshot-update
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ckpttui.ui.app import make_app


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


SIZES = [(80, 24), (120, 40)]


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_folder_view_lists_runs_by_size_with_optimizer_share(
    snap_compare: Any, ui_root: Path, size: tuple[int, int]
) -> None:
    assert snap_compare(make_app(str(ui_root)), terminal_size=size, run_before=_then())


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_funasr_epoch_breakdown_shows_weights_and_optimizer(
    snap_compare: Any, ui_root: Path, size: tuple[int, int]
) -> None:
    app = make_app(str(ui_root / "asr-funasr" / "exp" / "model.pt.ep3"))
    assert snap_compare(app, terminal_size=size, run_before=_then())


def test_funasr_run_training_curve(snap_compare: Any, ui_root: Path) -> None:
    app = make_app(str(ui_root / "asr-funasr" / "exp"))
    assert snap_compare(app, terminal_size=(120, 40), run_before=_then("c"))


def test_deepspeed_checkpoint_summary(snap_compare: Any, ui_root: Path) -> None:
    app = make_app(str(ui_root / "lm-deepspeed-z2" / "global_step2" / "mp_rank_00_model_states.pt"))
    assert snap_compare(app, terminal_size=(120, 40), run_before=_then("1"))


def test_help_screen(snap_compare: Any, ui_root: Path) -> None:
    assert snap_compare(
        make_app(str(ui_root)), terminal_size=(80, 24), run_before=_then("question_mark")
    )
