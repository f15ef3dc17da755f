"""ESPnet2 run folders: recognised, epochs, reporter metrics, links never candidates, exports that
``Speech2Text`` loads (a flat state dict)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from helpers import run_cli

from ckpttui.inventory import report_dict, scan
from ckpttui.jobs.average import average
from ckpttui.jobs.export import export
from ckpttui.jobs.select import select_best, select_last


def _drive(events: object) -> list[object]:
    return list(events)  # type: ignore[call-overload]


def test_run_folder_is_recognised(espnet_run: Path) -> None:
    report = report_dict(scan(espnet_run))
    by_name = {Path(c["path"]).name: c for c in report["checkpoints"]}
    assert {c["layout"] for c in by_name.values()} == {"espnet"}
    assert [by_name[f"{e}epoch.pth"]["epoch"] for e in (1, 2, 3, 4)] == [1, 2, 3, 4]
    resume = by_name["checkpoint.pth"]
    assert resume["epoch"] == 4
    assert resume["info"]["reporter"]["2"]["valid"]["acc"] == 0.71  # VALID_ACC[2] (conftest)
    assert resume["categories"]["optimizer"]["bytes"] > 0
    # links are shown for what they are and counted once
    assert by_name["latest.pth"]["info"]["symlink_to"] == "4epoch.pth"
    assert by_name["latest.pth"]["size"] == 0
    assert by_name["valid.acc.ave_2best.pth"]["info"]["averaged"] == 2
    files = [f["path"] for f in report["files"]]
    assert len(files) == len(set(files)) and "latest.pth" not in files
    epoch_bytes = by_name["4epoch.pth"]["tensor_bytes"]
    total = sum(c["tensor_bytes"] for c in report["checkpoints"])
    distinct = (
        sum(
            by_name[n]["tensor_bytes"]
            for n in ("1epoch.pth", "2epoch.pth", "3epoch.pth", "4epoch.pth", "checkpoint.pth")
        )
        + by_name["valid.acc.ave_2best.pth"]["tensor_bytes"]
    )
    assert epoch_bytes > 0 and total == distinct


def test_last_two_are_the_newest_epoch_files(espnet_run: Path) -> None:
    chosen = select_last(espnet_run, 2)
    assert [p.name for p in chosen.paths] == ["3epoch.pth", "4epoch.pth"]


def test_best_follows_the_reporter_and_config(espnet_run: Path) -> None:
    chosen = select_best(espnet_run, 2)  # valid.acc, max (config.yaml best_model_criterion)
    assert [p.name for p in chosen.ranked] == ["2epoch.pth", "4epoch.pth"]
    assert "valid.acc" in chosen.rule and "highest first" in chosen.rule
    loss = select_best(espnet_run, 2, metric="valid.loss")
    assert [p.name for p in loss.ranked] == ["4epoch.pth", "2epoch.pth"]


def test_best_average_equals_espnets_own(espnet_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "ours.pth"
    chosen = select_best(espnet_run, 2)
    events = _drive(average(chosen.paths, out))
    ours = torch.load(out, weights_only=True)
    theirs = torch.load(espnet_run / "valid.acc.ave_2best.pth", weights_only=True)
    assert list(ours) == list(theirs)  # a flat state dict, as Speech2Text loads
    for k, v in theirs.items():
        if v.is_floating_point():
            assert torch.allclose(ours[k], v, rtol=1e-6, atol=1e-7), k
    # ESPnet sums integer tensors (num_batches_tracked); ckpttui keeps the last input's and says so
    notes = " ".join(e.message for e in events if e.kind == "log")  # type: ignore[attr-defined]
    assert "sums them" in notes


def test_slim_export_of_checkpoint_pth_is_the_flat_model(espnet_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.pth"
    _drive(export(espnet_run / "checkpoint.pth", out))
    ours = torch.load(out, weights_only=True)
    ref = torch.load(espnet_run / "checkpoint.pth", weights_only=False)["model"]
    assert list(ours) == list(ref)
    assert all(torch.equal(ours[k], v) for k, v in ref.items())


def test_cli_last_two(espnet_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "last2.pth"
    proc = run_cli("average", str(espnet_run), "--last", "2", "-o", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    start = next(json.loads(line) for line in proc.stdout.splitlines() if '"start"' in line)
    assert [Path(p).name for p in start["data"]["inputs"]] == ["3epoch.pth", "4epoch.pth"]


REAL = Path(__file__).resolve().parents[1] / "data" / "espnet" / "asr_tiny"


def test_real_run_best_average_equals_espnets_own(tmp_path: Path) -> None:
    import shutil

    run = Path(shutil.copytree(REAL, tmp_path / "asr_tiny", symlinks=True))
    assert (run / "latest.pth").is_symlink()
    report = report_dict(scan(run))
    assert {c["layout"] for c in report["checkpoints"]} == {"espnet"}
    links = {c["path"]: c["size"] for c in report["checkpoints"] if "symlink_to" in c["info"]}
    assert links == {"latest.pth": 0, "valid.acc.ave.pth": 0, "valid.acc.best.pth": 0}
    assert [p.name for p in select_last(run, 2).paths] == ["1epoch.pth", "3epoch.pth"]
    best = select_best(run, 2)
    assert [p.name for p in best.ranked] == ["3epoch.pth", "1epoch.pth"]
    out = tmp_path / "ours.pth"
    _drive(average(best.paths, out))
    ours = torch.load(out, weights_only=True)
    theirs = torch.load(run / "valid.acc.ave_2best.pth", weights_only=True)
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], v) for k, v in theirs.items())  # fp32 sums of two: exact
    _drive(export(run / "checkpoint.pth", tmp_path / "model.pth"))
    model = torch.load(tmp_path / "model.pth", weights_only=True)
    assert all(torch.equal(model[k], v) for k, v in torch.load(run / "3epoch.pth").items())
