"""Fidelity of job outputs: every value the framework's loader or resume path reads survives
(tensors inside metadata included, bit for bit), drops are the asked-for ones in one line per
kind, and no file is written that the loader would load silently wrong."""

from __future__ import annotations

import argparse
import fractions
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
from weights_ref import load

from ckpttui.inventory import scan
from ckpttui.jobs.average import average
from ckpttui.jobs.events import Event, JobError
from ckpttui.jobs.export import export


def logs(events: list[Event]) -> list[str]:
    return [e.message for e in events if e.kind == "log"]


def same(a: Any, b: Any) -> bool:
    """Equal values, tensors compared bit for bit with their dtype."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, argparse.Namespace):
        return same(vars(a), vars(b))
    return bool(a == b)


def _fairseq(path: Path, seed: int, updates: int) -> Path:
    """A mid-epoch fairseq checkpoint as fairseq-train writes it: meters in
    ``extra_state.metrics`` hold tensors (fairseq/logging/meters.py AverageMeter.state_dict:
    ``val``/``sum`` are what was logged, tensors; MetersDict.state_dict: a list of
    (priority, key, class name, state))."""
    g = torch.Generator().manual_seed(seed)
    model = OrderedDict(
        (k, torch.randn(4, 4, generator=g)) for k in ("encoder.w", "decoder.w", "decoder.b")
    )
    meters = OrderedDict(
        train=[
            (
                0,
                "loss",
                "AverageMeter",
                {
                    "val": torch.tensor(2.5 + seed),
                    "sum": torch.tensor(30.0, dtype=torch.float64),
                    "count": 12132,
                    "round": 3,
                },
            ),
            (
                10,
                "nll_loss",
                "AverageMeter",
                {"val": torch.tensor(2.1), "sum": torch.tensor(25.2), "count": 12132, "round": 3},
            ),
            (900, "wps", "TimeMeter", {"init": 0, "n": 4096, "round": 1}),
        ]
    )
    torch.save(
        {
            "args": argparse.Namespace(arch="transformer", lr=[0.0005], max_epoch=3),
            "model": model,
            "optimizer_history": [
                {
                    "criterion_name": "CrossEntropyCriterion",
                    "optimizer_name": "FairseqAdam",
                    "lr_scheduler_state": {"best": 3.9},
                    "num_updates": updates,
                }
            ],
            "extra_state": {
                "metrics": meters,
                "train_iterator": {"epoch": 2, "iterations_in_epoch": 15, "shuffle": True},
                "previous_training_time": 12.0,
                "best": torch.tensor(3.875),
            },
            "last_optimizer_state": {
                "state": {0: {"exp_avg": torch.zeros(4, 4)}},
                "param_groups": [{"lr": 1e-3, "params": [0]}],
            },
        },
        path,
    )
    return path


def test_fairseq_meter_tensors_round_trip(tmp_path: Path) -> None:
    src = _fairseq(tmp_path / "checkpoint_2_15.pt", 0, 15)
    assert scan(src).checkpoints[0].layout == "fairseq"
    events = list(export(src, tmp_path / "slim.pt"))
    out = torch.load(tmp_path / "slim.pt", weights_only=False)
    ref = torch.load(src, weights_only=False)
    assert same(out["extra_state"], ref["extra_state"])  # meters' val/sum tensors, bit for bit
    assert same(out["model"], ref["model"]) and "last_optimizer_state" not in out
    lines = logs(events)
    assert not any("dropped" in m for m in lines)
    assert sum("left out last_optimizer_state" in m for m in lines) == 1


def test_fairseq_average_takes_the_first_inputs_metadata(tmp_path: Path) -> None:
    a = _fairseq(tmp_path / "checkpoint_2_15.pt", 0, 15)
    b = _fairseq(tmp_path / "checkpoint_2_30.pt", 1, 30)
    events = list(average([a, b], tmp_path / "avg.pt"))
    out = torch.load(tmp_path / "avg.pt", weights_only=False)
    first = torch.load(a, weights_only=False)
    assert same(out["extra_state"], first["extra_state"])
    assert out["optimizer_history"] == first["optimizer_history"]
    assert any("metadata from the first input (checkpoint_2_15.pt)" in m for m in logs(events))


def test_flat_writes_the_bare_state_dict(tmp_path: Path) -> None:
    src = _fairseq(tmp_path / "checkpoint3.pt", 0, 40)
    events = list(export(src, tmp_path / "flat.pt", flat=True))
    out = torch.load(tmp_path / "flat.pt", weights_only=True)
    assert list(out) == ["encoder.w", "decoder.w", "decoder.b"]
    assert any("bare state dict" in m for m in logs(events))


def test_plain_torch_keeps_epoch_and_step_and_names_what_it_drops(tmp_path: Path) -> None:
    src = tmp_path / "run.pt"
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "epoch": 3,
            "step": 120,
        },
        src,
    )
    events = list(export(src, tmp_path / "slim.pt"))
    out = torch.load(tmp_path / "slim.pt", weights_only=True)
    assert (out["epoch"], out["step"]) == (3, 120)
    assert same(out["model"], model.state_dict())
    assert any("left out optimizer, scheduler" in m for m in logs(events))


def test_drops_are_one_line_per_kind(tmp_path: Path) -> None:
    src = tmp_path / "model.ckpt"
    torch.save(
        {
            "pytorch-lightning_version": "2.6.6",
            "epoch": 0,
            "global_step": 1,
            "state_dict": {"w": torch.ones(2)},
            "hyper_parameters": {f"r{i}": fractions.Fraction(1, i + 2) for i in range(5)},
        },
        src,
    )
    events = list(export(src, tmp_path / "slim.ckpt"))
    dropped = [m for m in logs(events) if "dropped" in m]
    assert len(dropped) == 1 and "dropped 5 fractions.Fraction values" in dropped[0]


@pytest.fixture
def sb_save(tmp_path: Path) -> list[Path]:
    from ckpttui.demo.toolkit_writers import write_speechbrain_run

    write_speechbrain_run(tmp_path / "sb")
    return sorted((tmp_path / "sb" / "save").glob("CKPT+*"))


def test_speechbrain_folder_average_is_a_folder(sb_save: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "CKPT+avg"
    events = list(average(sb_save, out))
    assert events[-1].kind == "done"
    names = sorted(p.name for p in out.iterdir())
    assert "optimizer.ckpt" not in names
    assert {"model.ckpt", "wav2vec2.ckpt", "normalizer.ckpt", "CKPT.yaml", "counter.ckpt"} <= set(
        names
    )
    newest = sb_save[-1]
    # normaliser statistics carried byte for byte (its integer count included)
    assert (out / "normalizer.ckpt").read_bytes() == (newest / "normalizer.ckpt").read_bytes()
    assert (
        torch.load(out / "normalizer.ckpt", weights_only=True)["count"]
        == torch.load(newest / "normalizer.ckpt", weights_only=True)["count"]
    )
    for module in ("model", "wav2vec2"):
        ours = torch.load(out / f"{module}.ckpt", weights_only=True)
        inputs = [load(f / f"{module}.ckpt") for f in sb_save]
        assert list(ours) == list(inputs[0])  # no module prefix: the loader's own names
        for k, v in ours.items():
            if v.is_floating_point():
                mean = sum(i[k].double() for i in inputs) / len(inputs)
                assert torch.allclose(v.double(), mean, atol=1e-6), k
    assert any("carried from" in m and "normalizer.ckpt" in m for m in logs(events))
    inv = scan(out)
    assert [c.layout for c in inv.checkpoints] == ["speechbrain"]


def test_speechbrain_folder_to_one_file_is_refused(sb_save: list[Path], tmp_path: Path) -> None:
    with pytest.raises(JobError, match="--recoverable"):
        list(average(sb_save, tmp_path / "all.pt"))
    with pytest.raises(JobError, match="one file per module"):
        list(export(sb_save[0], tmp_path / "all.ckpt"))
    assert list(tmp_path.glob("all*")) == []
    list(export(sb_save[0], tmp_path / "model.ckpt", recoverable="model"))
    assert same(load(tmp_path / "model.ckpt"), load(sb_save[0] / "model.ckpt"))


def test_speechbrain_folder_export_keeps_the_shape(sb_save: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "CKPT+slim"
    list(export(sb_save[0], out))
    assert (out / "normalizer.ckpt").read_bytes() == (sb_save[0] / "normalizer.ckpt").read_bytes()
    assert same(load(out / "model.ckpt"), load(sb_save[0] / "model.ckpt"))
    assert not (out / "optimizer.ckpt").exists()


def test_cli_flat_and_recoverable(sb_save: list[Path], tmp_path: Path) -> None:
    from helpers import run_cli

    src = _fairseq(tmp_path / "checkpoint3.pt", 0, 40)
    proc = run_cli("export", str(src), "--flat", "-o", str(tmp_path / "flat.pt"))
    assert proc.returncode == 0, proc.stderr
    assert list(torch.load(tmp_path / "flat.pt", weights_only=True)) == [
        "encoder.w",
        "decoder.w",
        "decoder.b",
    ]
    out = tmp_path / "model.ckpt"
    proc = run_cli("average", *map(str, sb_save), "--recoverable", "model", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert list(torch.load(out, weights_only=True)) == list(load(sb_save[0] / "model.ckpt"))
    proc = run_cli("average", *map(str, sb_save), "-o", str(tmp_path / "all.pt"))
    assert proc.returncode == 1 and "--recoverable" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


FAIRSEQ = Path(__file__).resolve().parents[1] / "data" / "fairseq"


def test_real_fairseq_mid_epoch_export_and_average(tmp_path: Path) -> None:
    # fairseq-train --restore-file reads extra_state["metrics"] into meters (load_state_dict
    # needs each AverageMeter's val/sum); these files were written by fairseq-train itself.
    src = FAIRSEQ / "checkpoint_3_45.pt"
    ref = torch.load(src, weights_only=False)
    assert isinstance(ref["extra_state"]["metrics"]["default"][0][3]["val"], torch.Tensor)
    events = list(export(src, tmp_path / "mid_slim.pt"))
    out = torch.load(tmp_path / "mid_slim.pt", weights_only=False)
    for key in ("cfg", "model", "criterion", "optimizer_history", "task_state", "extra_state"):
        assert same(out[key], ref[key]), key
    assert "last_optimizer_state" not in out
    assert not any("other tensors" in m or "dropped" in m for m in logs(events))
    first = torch.load(FAIRSEQ / "checkpoint_3_40.pt", weights_only=False)
    list(average([FAIRSEQ / "checkpoint_3_40.pt", src], tmp_path / "mid_avg.pt"))
    avg = torch.load(tmp_path / "mid_avg.pt", weights_only=False)
    assert same(avg["extra_state"], first["extra_state"])
    assert same(avg["optimizer_history"], first["optimizer_history"])
