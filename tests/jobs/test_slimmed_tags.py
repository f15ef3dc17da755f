"""DeepSpeed tag folders that reclaim slimmed (weights in ``pytorch_model.bin``, rank files gone)
as inputs of export, average and merge, beside unslimmed ones of the same run.

A run of three tags is built from a real DeepSpeed save (ds_root): the newest tag as DeepSpeed
wrote it and two older copies under older tag names; reclaim then slims the two older ones. What
the jobs write is loaded with ``torch.load(weights_only=True)`` and compared with DeepSpeed's own
``zero_to_fp32`` of the original folder, and with the same job on the unslimmed run.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from fixtures.ds_writers import default_configs
from helpers import run_cli

from ckpttui.jobs.average import average
from ckpttui.jobs.events import JobError, drive
from ckpttui.jobs.export import export
from ckpttui.jobs.merge import merge
from ckpttui.jobs.reclaim import reclaim
from ckpttui.jobs.select import select_last

OLDER = {"wenet_z2": ("epoch_1.pt", "epoch_2.pt"), "funasr_z3": ("model.pt.ep1", "model.pt.ep2")}
"""Older tag names of the run, as each framework names its tags."""


def _done(events: Any) -> list[Any]:
    out = list(events)
    assert out[-1].kind == "done", out[-1].message
    return out


def _runs(ds_root: Path, tmp_path: Path, name: str) -> tuple[Path, Path]:
    """(original run, the same run with its two older tags slimmed by reclaim)."""
    cfg = next(c for c in default_configs() if c.name == name)
    orig = tmp_path / "orig"
    shutil.copytree(ds_root / "ws2" / cfg.subdir, orig)
    newest = orig / (orig / "latest").read_text().strip()
    for tag in OLDER[name]:
        shutil.copytree(newest, orig / tag)
    old = time.time() - 3600  # settled files, as a finished run's are (reclaim skips fresh ones)
    for folder, _dirs, names in os.walk(orig):
        for n in names:
            os.utime(Path(folder) / n, (old, old))
    run = tmp_path / "run"
    shutil.copytree(orig, run)
    _done(drive(reclaim([str(run)], keep_last=1, keep_best=0), "reclaim"))
    for tag in OLDER[name]:
        assert (run / tag / "pytorch_model.bin").is_file()
        assert not list((run / tag).glob("*optim_states.pt"))
    assert list(newest.glob("*optim_states.pt"))  # the newest stays whole
    return orig, run


def _same(mine: dict[str, Any], ref: dict[str, Any]) -> None:
    """Same names in the same order, same values (ckpttui keeps frozen bf16 values as fp32,
    which is exact: DeepSpeed's are compared upcast)."""
    assert list(mine) == list(ref)
    for k in mine:
        assert torch.equal(mine[k], ref[k].to(mine[k].dtype)), k


@pytest.mark.parametrize("name", ["wenet_z2", "funasr_z3"])
def test_average_last_over_a_partly_slimmed_run(
    ds_root: Path, ds_reference: dict[str, Any], tmp_path: Path, name: str
) -> None:
    orig, run = _runs(ds_root, tmp_path, name)
    # --last 2: one slimmed tag and the unslimmed newest; the tags hold the same weights, so
    # the mean is exactly DeepSpeed's consolidation of them ((x + x) / 2 == x)
    out = tmp_path / "avg.pt"
    proc = run_cli("average", str(run), "--last", "2", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    ref = torch.load(ds_reference[f"ws2/{name}"], weights_only=True)
    mine = torch.load(out, weights_only=True)
    _same(mine, ref)
    # all three, against the same average of the unslimmed run
    chosen = select_last(run, 3).paths
    assert [p.name for p in chosen] == [*OLDER[name], (run / "latest").read_text().strip()]
    _done(drive(average(chosen, tmp_path / "slim3.pt"), "average"))
    _done(drive(average(select_last(orig, 3).paths, tmp_path / "orig3.pt"), "average"))
    _same(
        torch.load(tmp_path / "slim3.pt", weights_only=True),
        torch.load(tmp_path / "orig3.pt", weights_only=True),
    )


def test_export_reads_the_slimmed_folder(
    ds_root: Path, ds_reference: dict[str, Any], tmp_path: Path
) -> None:
    orig, run = _runs(ds_root, tmp_path, "funasr_z3")
    tag = OLDER["funasr_z3"][0]
    for which, root in (("slim", run), ("orig", orig)):
        _done(drive(export(root / tag, tmp_path / f"{which}.pt"), "export"))
    ref = torch.load(ds_reference["ws2/funasr_z3"], weights_only=True)
    slim = torch.load(tmp_path / "slim.pt", weights_only=True)
    _same(slim, torch.load(tmp_path / "orig.pt", weights_only=True))
    _same(slim, ref)


def test_merge_of_a_slimmed_folder_writes_its_consolidated_weights(
    ds_root: Path, ds_reference: dict[str, Any], tmp_path: Path
) -> None:
    _orig, run = _runs(ds_root, tmp_path, "wenet_z2")
    tag = run / OLDER["wenet_z2"][0]
    events = _done(drive(merge(tag, tmp_path / "m.safetensors"), "merge"))
    said = " ".join(e.message for e in events)
    assert "already consolidated" in said and str(tag / "pytorch_model.bin") in said
    from safetensors.torch import load_file

    _same(load_file(tmp_path / "m.safetensors"), torch.load(tag / "pytorch_model.bin"))
    _same(load_file(tmp_path / "m.safetensors"), torch.load(ds_reference["ws2/wenet_z2"]))
    # the folder given with --tag, as for an unslimmed run
    _done(drive(merge(run, tmp_path / "t.pt", tag=tag.name), "merge"))
    # what needs the rank files says so, naming the folder
    with pytest.raises(JobError, match=f"{tag}: already consolidated.*compat"):
        list(merge(tag, tmp_path / "c.pt", compat=True))
    assert not (tmp_path / "c.pt").exists()


def test_the_app_says_a_slimmed_folder_holds_consolidated_weights(
    ds_root: Path, tmp_path: Path
) -> None:
    from rich.console import Console

    from ckpttui.inventory import scan
    from ckpttui.ui.widgets.render import advice_renderable, summary_renderable

    _orig, run = _runs(ds_root, tmp_path, "wenet_z2")
    inv = scan(run)
    said = {}
    for ckpt in inv.checkpoints:
        console = Console(width=200, record=True, color_system=None)
        console.print(advice_renderable(inv, ckpt))
        console.print(summary_renderable(inv, ckpt))
        said[Path(ckpt.path).name] = " ".join(console.export_text().split())
    slim = said[OLDER["wenet_z2"][0]]
    assert "Consolidated weights:" in slim and "pytorch_model.bin" in slim
    assert "Press e" in slim and "Press m" not in slim and "split over" not in slim
    assert "consolidated pytorch_model.bin" in slim  # the Summary row
    assert "split over 2 optimizer shard(s)" in said["epoch_3.pt"]
    # m on it opens the merge form (which writes its consolidated file), not a refusal
    from ckpttui.ui.jobrequest import request_for
    from ckpttui.ui.widgets.checkpoint_view import CheckpointView
    from ckpttui.ui.widgets.tree import NodeData

    slim_tag = run / OLDER["wenet_z2"][0]
    request = request_for("merge", NodeData("dir", str(slim_tag)), [], CheckpointView())
    assert request.kind == "merge" and request.inputs == [str(slim_tag)]


@pytest.mark.parametrize(
    "name", ["z1_bf16_frozen_tied", "z2_fp32_frozen_tied", "z3_bf16_frozen_tied"]
)
def test_export_of_an_unslimmed_tag_is_its_consolidation(
    ds_root: Path, ds_reference: dict[str, Any], tmp_path: Path, name: str
) -> None:
    save = ds_root / "ws2" / name
    tag = save / (save / "latest").read_text().strip()
    events = _done(drive(export(tag, tmp_path / "w.pt"), "export"))
    assert any("consolidated from the ZeRO" in e.message for e in events)
    mine = torch.load(tmp_path / "w.pt", weights_only=True)
    ref = torch.load(ds_reference[f"ws2/{name}"], weights_only=True)
    if name.startswith("z1"):  # DeepSpeed drops ZeRO-1 frozen parameters (deepspeed#5439)
        mine = {k: v for k, v in mine.items() if k in ref}
    _same(mine, ref)


def test_export_of_a_stage_0_folder_is_its_model(ds_root: Path, tmp_path: Path) -> None:
    """Stage 0 saves no optimizer partitions: the weights are whole in the model states."""
    save = ds_root / "ws2" / "z0_fp32"
    tag = save / (save / "latest").read_text().strip()
    _done(drive(export(tag, tmp_path / "w.pt"), "export"))
    module = torch.load(tag / "mp_rank_00_model_states.pt", weights_only=True)["module"]
    _same(torch.load(tmp_path / "w.pt", weights_only=True), module)
