"""The folder scan (ckpttui.scan): summaries streamed in walk order, worker processes, the cache.

The reference is the in-process inventory (`inventory.scan` + `report_dict`) on the same tree:
what ``inspect --json`` printed before summaries, workers and the cache existed.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

from ckpttui.cli import main
from ckpttui.inventory import report_dict, scan
from ckpttui.scan import FolderScan, write_json
from ckpttui.summary import CheckpointSummary, FileSummary


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three runs of real torch.save files (two layouts), a link, a hardlink, a broken file, a
    file still being written and an HF-style checkpoint folder."""
    import torch

    root = tmp_path_factory.mktemp("lab")
    sd = {f"enc.{i}.weight": torch.randn(4, 4) for i in range(3)}
    opt = {
        "state": {i: {"exp_avg": torch.zeros(4, 4)} for i in range(3)},
        "param_groups": [{"lr": 0.1, "params": [0, 1, 2]}],
    }
    for r in range(3):
        run = root / f"run{r}"
        run.mkdir()
        for n in range(1, 13):
            if r == 1:
                torch.save({**sd, "bias": torch.full((2,), float(n))}, run / f"epoch_{n}.pt")
                (run / f"epoch_{n}.yaml").write_text(f"cv_loss: {1 / n}\nepoch: {n}\nstep: {n}\n")
            else:
                torch.save(
                    {"model": sd, "optimizer": opt, "epoch": n, "n": torch.tensor(n)},
                    run / f"epoch_{n}.pt",
                )
    (root / "run0" / "latest.pt").symlink_to("epoch_12.pt")
    os.link(root / "run2" / "epoch_3.pt", root / "run0" / "copy_of_run2_epoch_3.pt")
    (root / "run2" / "broken.pt").write_bytes(b"PK\x03\x04 not a zip")
    (root / "run2" / "epoch_13.pt.tmp").write_bytes(b"partial")
    hf = root / "run2" / "checkpoint-500"
    hf.mkdir()
    torch.save(opt, hf / "optimizer.pt")
    torch.save(sd, hf / "pytorch_model.bin")
    (hf / "trainer_state.json").write_text(json.dumps({"global_step": 500, "log_history": []}))
    return root


def _streamed(root: Path, **kw: object) -> dict:
    out = io.StringIO()
    write_json(FolderScan(str(root), **kw), out)  # type: ignore[arg-type]
    return json.loads(out.getvalue())


def _comparable(doc: dict) -> dict:
    for c in doc["checkpoints"]:
        c.pop("dtypes", None)
        c.pop("file_sizes", None)
    doc["files"].sort(key=lambda f: f["path"])
    return doc


@pytest.mark.parametrize("jobs", [1, 2])
def test_streamed_scan_says_what_the_inventory_says(lab: Path, jobs: int) -> None:
    expected = _comparable(report_dict(scan(lab)))
    got = _comparable(_streamed(lab, jobs=jobs, use_cache=False))
    assert got == expected
    by_path = {c["path"]: c for c in got["checkpoints"]}
    assert by_path["run0/latest.pt"]["info"]["symlink_to"] == "epoch_12.pt"
    # a hardlink in another run folder counts once, under its first path that is not a link
    assert by_path["run2/epoch_3.pt"]["info"]["same_file_as"] == "run0/copy_of_run2_epoch_3.pt"
    assert by_path["run2/epoch_3.pt"]["tensor_bytes"] == 0
    assert not by_path["run2/epoch_13.pt.tmp"]["complete"]
    assert any(e["path"] == "run2/broken.pt" for e in got["errors"])
    assert [c["path"] for c in got["checkpoints"]] == [
        c["path"] for c in expected["checkpoints"]
    ]  # in walk order, whatever the number of workers


def test_second_scan_comes_from_the_cache_and_rereads_only_what_changed(
    lab: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CKPTTUI_SCAN_CACHE", str(tmp_path / "cache"))
    first = FolderScan(str(lab), jobs=1)
    doc1 = io.StringIO()
    write_json(first, doc1)
    units = len(first.plan.units)
    assert first.read == units and (tmp_path / "cache" / "scans.sqlite").is_file()

    second = FolderScan(str(lab), jobs=1)
    doc2 = io.StringIO()
    write_json(second, doc2)
    # only what is incomplete (a save still being written, an abandoned temp) is read again:
    # whether its writer still runs is not in its files' signature
    incomplete = [c for c in json.loads(doc1.getvalue())["checkpoints"] if not c["complete"]]
    assert incomplete and second.read == len(incomplete)
    assert json.loads(doc2.getvalue()) == json.loads(doc1.getvalue())

    import torch

    changed = lab / "run1" / "epoch_5.pt"
    try:
        torch.save({"w": torch.zeros(1000)}, changed)
        third = FolderScan(str(lab), jobs=1)
        doc3 = json.loads(_dump(third))
        assert third.read == 1 + len(incomplete)
        entry = next(c for c in doc3["checkpoints"] if c["path"] == "run1/epoch_5.pt")
        assert entry["tensor_bytes"] == 4000
        no_cache = FolderScan(str(lab), jobs=1, use_cache=False)
        _dump(no_cache)
        assert no_cache.read == units
    finally:
        torch.save({"w": torch.zeros(1)}, changed)  # other tests: any content, but a checkpoint


def _dump(s: FolderScan) -> str:
    out = io.StringIO()
    write_json(s, out)
    return out.getvalue()


def test_inspect_options(lab: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(lab / "run1"), "--json", "-j", "2", "--no-cache"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["checkpoints"]) == 12
    assert doc["checkpoints"][0]["info"]["cv_loss"] == 1.0
    assert main(["inspect", str(lab / "run1"), "--jobs", "1"]) == 0
    text = capsys.readouterr().out
    assert "12 checkpoints" in text and "epoch_12.pt" in text
    with pytest.raises(SystemExit):
        main(["inspect", str(lab), "-j", "0"])


def test_a_summary_round_trips_through_its_inspect_entries(lab: Path) -> None:
    s = FolderScan(str(lab / "run0"), jobs=1, use_cache=False)
    rel = s.rel
    for result in s.results():
        for ckpt in result.checkpoints:
            files = {
                f.path: FileSummary.from_dict(f.to_dict(rel), str(lab / "run0"))
                for f in ckpt.files_read
            }
            back = CheckpointSummary.from_dict(ckpt.to_dict(rel), str(lab / "run0"), files)
            assert back.to_dict(rel) == ckpt.to_dict(rel)
            assert [f.to_dict(rel) for f in back.files_read] == [
                f.to_dict(rel) for f in ckpt.files_read
            ]
            assert back.checkpoint().info == ckpt.info


async def test_the_folder_view_fills_in_from_worker_processes(
    lab: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ckpttui.scan as scan_module
    from ckpttui.ui.app import make_app
    from ckpttui.ui.widgets.folder_view import FolderView

    monkeypatch.setattr(scan_module, "MIN_UNITS_PER_JOB", 1)  # workers even for a small folder
    monkeypatch.setattr(scan_module, "default_jobs", lambda: 2)
    expected = report_dict(scan(lab))
    app = make_app(str(lab))
    async with app.run_test(size=(120, 40)) as pilot:
        view = app.query_one(FolderView)
        for _ in range(3):
            await pilot.pause()
            await app.workers.wait_for_complete()
        await pilot.pause()
        assert view.scan_error is None
        assert view.inventory is not None
        assert len(view.inventory.checkpoints) == len(expected["checkpoints"])
        run0 = view.stats[str(lab / "run0")]
        in_run0 = [c for c in expected["checkpoints"] if c["path"].startswith("run0/")]
        assert run0.checkpoints == len(in_run0)
        assert run0.optimizer == sum(c["categories"]["optimizer"]["bytes"] for c in in_run0)


def test_cached_summaries_are_the_fresh_ones_in_every_form(
    lab: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache answers ``inspect --json`` with its stored text (byte for byte the fresh
    document), the folder view with light summaries, the text report with full ones; a unit
    holding a file reached twice (the hardlink) is summed across the walk as when fresh."""
    monkeypatch.setenv("CKPTTUI_SCAN_CACHE", str(tmp_path / "cache"))
    fresh = _dump(FolderScan(str(lab), jobs=1, use_cache=False))
    assert _dump(FolderScan(str(lab), jobs=1)) == fresh  # fills the cache
    assert _dump(FolderScan(str(lab), jobs=1)) == fresh  # from it

    def full(**kw: object) -> list[dict]:
        scan_ = FolderScan(str(lab), jobs=1, **kw)  # type: ignore[arg-type]
        return [
            dict(s.to_dict(str), files_read=[f.to_dict(str) for f in s.files_read])
            for r in scan_.results()
            for s in r.checkpoints
        ]

    def light(**kw: object) -> list[tuple]:
        scan_ = FolderScan(str(lab), jobs=1, light=True, **kw)  # type: ignore[arg-type]
        return [
            (s.path, s.layout, s.files, s.step, s.epoch, s.complete, s.info, s.categories)
            + (s.reclaimable_bytes, s.size)
            for r in scan_.results()
            for s in r.checkpoints
        ]

    assert full() == full(use_cache=False)
    assert light() == light(use_cache=False)
    cached = FolderScan(str(lab), jobs=1, light=True)
    assert sum(len(r.checkpoints) for r in cached.results()) and cached.read <= 2  # incomplete
    summed = {s[0]: s for s in light()}
    assert summed[str(lab / "run2" / "epoch_3.pt")][6]["same_file_as"].endswith(
        "copy_of_run2_epoch_3.pt"
    )


async def test_a_second_visit_shows_the_last_scan_at_once_then_checks_it(
    lab: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from textual.widgets import Static

    import ckpttui.scan as scan_module
    from ckpttui.ui.app import make_app
    from ckpttui.ui.widgets.folder_view import FolderView

    monkeypatch.setenv("CKPTTUI_SCAN_CACHE", str(tmp_path / "cache"))

    async def settle(app: Any, pilot: Any, cond: Any) -> None:
        for _ in range(600):
            await pilot.pause()
            if cond():
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the folder view never got there")

    app = make_app(str(lab))
    async with app.run_test(size=(120, 40)) as pilot:
        view = app.query_one(FolderView)
        await settle(app, pilot, lambda: view.inventory is not None)
        first = {p: (s.size, s.optimizer, s.checkpoints) for p, s in view.stats.items()}
    assert any(c for _, _, c in first.values())

    # The second visit's scan is held before it reads anything: what shows is the last scan's.
    release = threading.Event()
    results = scan_module.FolderScan.results

    def held(self: Any, *args: Any, **kwargs: Any) -> Any:
        release.wait(30)
        yield from results(self, *args, **kwargs)

    monkeypatch.setattr(scan_module.FolderScan, "results", held)
    app = make_app(str(lab))
    async with app.run_test(size=(120, 40)) as pilot:
        view = app.query_one(FolderView)
        await settle(app, pilot, lambda: view.remembered)
        shown = {p: (s.size, s.optimizer, s.checkpoints) for p, s in view.stats.items()}
        assert shown == first and all(s.scanned for s in view.stats.values())
        assert "as last scanned, checking" in str(view.query_one("#folder-totals", Static).content)
        release.set()
        await settle(app, pilot, lambda: view.inventory is not None)
        assert not view.remembered
        assert "checking" not in str(view.query_one("#folder-totals", Static).content)
        assert {p: (s.size, s.optimizer, s.checkpoints) for p, s in view.stats.items()} == first
