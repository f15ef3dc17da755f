"""Lightning checkpoints written by ``Trainer.fit`` (tests/data/lightning): ``--best`` reads the
ModelCheckpoint callback state each file carries."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ckpttui.inventory import scan
from ckpttui.jobs.events import JobError
from ckpttui.jobs.select import select_best, select_last

DATA = Path(__file__).resolve().parents[1] / "data" / "lightning" / "top"


@pytest.fixture
def top(tmp_path: Path) -> Path:
    return Path(shutil.copytree(DATA, tmp_path / "top"))


def test_model_checkpoint_state_is_read(top: Path) -> None:
    inv = scan(top)
    last = next(c for c in inv.checkpoints if c.path.endswith("last.ckpt"))
    (state,) = last.info["model_checkpoint"]
    assert state["monitor"] == "val_loss" and state["mode"] == "min"
    assert state["best_k_models"] == pytest.approx(
        {"epoch=2-val_loss=0.6187.ckpt": 0.6187, "epoch=3-val_loss=0.6159.ckpt": 0.6159}, abs=1e-4
    )


def test_best_ranks_by_the_monitored_metric_best_first(top: Path) -> None:
    chosen = select_best(top, 2)
    assert [p.name for p in chosen.ranked] == [
        "epoch=3-val_loss=0.6159.ckpt",
        "epoch=2-val_loss=0.6187.ckpt",
    ]
    # averaged in training order, and the summary lists best first as it says
    assert [p.name for p in chosen.paths] == [
        "epoch=2-val_loss=0.6187.ckpt",
        "epoch=3-val_loss=0.6159.ckpt",
    ]
    line = chosen.summary()
    assert "val_loss" in line and "lowest first" in line
    assert line.index("epoch=3") < line.index("epoch=2") and "training order" in line
    best1 = select_best(top, 1)
    assert [p.name for p in best1.paths] == ["epoch=3-val_loss=0.6159.ckpt"]
    # last.ckpt is a copy of the newest save: never a candidate
    assert "last.ckpt" not in {p.name for p in select_last(top, 2).paths}


def test_without_callback_state_the_error_names_metric(top: Path, tmp_path: Path) -> None:
    import torch

    bare = tmp_path / "bare"
    bare.mkdir()
    for src in sorted(top.glob("epoch=*.ckpt")):
        ckpt = torch.load(src, weights_only=False)
        ckpt.pop("callbacks")
        torch.save(ckpt, bare / src.name)
    with pytest.raises(JobError, match="--metric"):
        select_best(bare, 1)
    assert [p.name for p in select_best(bare, 1, metric="val_loss").paths] == [
        "epoch=3-val_loss=0.6159.ckpt"
    ]


def test_curve_shows_the_monitored_metric_of_each_save(top: Path) -> None:
    from ckpttui.curves import build_curve

    curve = build_curve(scan(top))
    (series,) = [s for s in curve.series if s.name == "val_loss"]
    assert series.y == pytest.approx([0.6187, 0.6159], abs=1e-4)  # epochs 2 and 3
    assert not curve.empty
