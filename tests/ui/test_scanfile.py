"""A saved scan (`ckpttui inspect PATH --json > scan.json`) browsed elsewhere: `ckpttui scan.json`.

The scan is taken of a copy of the experiments folder, and the copy is deleted before the scan
is opened: what the app shows can only come from the file. It must show what the app shows on
the folder itself (same totals, breakdowns, curve), read-only.
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest
from helpers import inspect_json, run_cli
from test_app import settle, text_of

from ckpttui.ui.app import CkptApp, make_app
from ckpttui.ui.widgets.curve import CurveView
from ckpttui.ui.widgets.folder_view import FolderView
from ckpttui.ui.widgets.jobs import JobRow
from ckpttui.ui.widgets.tree import CheckpointTree


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory, ui_root: Path) -> tuple[Path, Path]:
    """(scan.json, the folder it was taken of, as it was: a twin at the same place is gone)."""
    where = tmp_path_factory.mktemp("server")
    copy = where / "experiments"
    shutil.copytree(ui_root, copy)
    doc = inspect_json(copy)
    shutil.rmtree(copy)
    scan = tmp_path_factory.mktemp("laptop") / "scan.json"
    scan.write_text(json.dumps(doc))
    return scan, copy


async def open_at(app: CkptApp, pilot: Any, path: str) -> None:
    """Reveal a path in the tree and let the right pane fill in."""
    app.query_one(CheckpointTree).reveal(path)
    for _ in range(4):
        await settle(app, pilot)


def totals(app: CkptApp) -> list[str]:
    """The folder totals below the first line (which names the folder and says live or not)."""
    return text_of(app.query_one("#folder-totals")).splitlines()[1:]


async def test_saved_scan_shows_the_folder_as_the_disk_did(
    saved: tuple[Path, Path], ui_root: Path
) -> None:
    scan, gone = saved
    assert not gone.exists()
    disk = make_app(str(ui_root))
    async with disk.run_test(size=(120, 40)) as pilot:
        await settle(disk, pilot)
        want_rows = {
            Path(p).name: (s.size, s.weights, s.optimizer, s.reclaimable, s.incomplete)
            for p, s in disk.query_one(FolderView).stats.items()
        }
        want_totals = totals(disk)
    app = make_app(str(scan))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        banner = text_of(app.query_one("#read-only"))
        assert banner.startswith(f"read-only scan ({socket.gethostname()}, 20")
        assert f"UTC): {gone}" in banner
        folder = app.query_one(FolderView)
        assert folder.path == str(gone)
        rows = {
            Path(p).name: (s.size, s.weights, s.optimizer, s.reclaimable, s.incomplete)
            for p, s in folder.stats.items()
        }
        assert rows == want_rows
        assert totals(app) == want_totals
        assert "live" not in text_of(app.query_one("#folder-totals"))


async def test_breakdown_and_curve_come_from_the_scan(
    saved: tuple[Path, Path], ui_root: Path
) -> None:
    scan, gone = saved
    ep3 = ui_root / "asr-funasr" / "exp" / "model.pt.ep3"
    disk = make_app(str(ep3))
    async with disk.run_test(size=(120, 40)) as pilot:
        await settle(disk, pilot)
        want_breakdown = text_of(disk.query_one("#breakdown"))
    disk = make_app(str(ui_root / "asr-funasr" / "exp"))
    async with disk.run_test(size=(120, 40)) as pilot:
        await settle(disk, pilot)
        want_curve = disk.query_one(CurveView).curve
    app = make_app(str(scan))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await open_at(app, pilot, str(gone / "asr-funasr" / "exp" / "model.pt.ep3"))
        assert app.query_one("#right").current == "ckpt-pane"
        # Parts of equal size may come in another order (the scan keeps them sorted by name).
        shown = text_of(app.query_one("#breakdown")).splitlines()
        assert sorted(shown) == sorted(want_breakdown.splitlines())
        summary = text_of(app.query_one("#summary"))
        assert "funasr" in summary and "epoch" in summary
        await open_at(app, pilot, str(gone / "asr-funasr" / "exp"))
        curve = app.query_one(CurveView).curve
        assert curve is not None and want_curve is not None
        assert curve.series == want_curve.series
        assert curve.checkpoints == want_curve.checkpoints
        # The broken run's truncated file is as incomplete in the scan as on the disk.
        await open_at(app, pilot, str(gone / "broken" / "model.pt.ep9"))
        assert "NO" in text_of(app.query_one("#summary"))


async def test_keys_that_need_the_files_say_why_they_are_off(saved: tuple[Path, Path]) -> None:
    scan, gone = saved
    app = make_app(str(scan))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await open_at(app, pilot, str(gone / "asr-funasr" / "exp" / "model.pt.ep3"))
        for key in ("m", "a", "e", "d", "v", "r", "p"):
            await pilot.press(key)
            await pilot.pause()
        said = [n.message for n in app._notifications]
        for what in ("merge", "average", "export", "reclaim", "verify", "refresh", "live"):
            assert any(m.startswith(f"{what} is off: this is a read-only saved scan") for m in said)
        assert len(app.screen_stack) == 1  # no job form opened
        # the command palette calls the actions themselves, past the keys
        app._notifications.clear()
        app.action_reclaim()
        app.action_verify()
        app.action_job("merge")
        await pilot.pause()
        said = [n.message for n in app._notifications]
        for what in ("reclaim", "verify", "merge"):
            assert any(m.startswith(f"{what} is off: this is a read-only saved scan") for m in said)
        assert len(app.screen_stack) == 1
        assert not app.query(JobRow)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ('{"model_type": "bert"}', "not a ckpttui scan"),
        ('{"root": "x", "files": [', "not valid JSON (line 1"),
        ('{"root": "x", "files": [], "checkpoints": [{"path": 3}]}', "not a ckpttui scan"),
        # Copied while `inspect --json` was still writing it.
        ('{\n "root": "x",\n "checkpoints": [\n  {"path": "a", "layout": "torch"},\n', "it ends"),
        ('{\n "root": "x",\n "checkpoints": [\n  {"path": "a"},\n  {"pa', "line 5 is cut short"),
    ],
)
def test_foreign_json_is_one_line_and_exit_2(tmp_path: Path, content: str, says: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(content)
    proc = run_cli(str(path))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"ckpttui: {path}: {says}")
    assert len(proc.stderr.strip().splitlines()) == 1
