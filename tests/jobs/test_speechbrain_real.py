"""SpeechBrain ``CKPT+`` folders written by ``Brain.fit`` (tests/data/speechbrain): a folder
averages to a folder the Checkpointer can recover (one bare state dict per module under its own
name, the normaliser carried with its count)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from weights_ref import load

from ckpttui.inventory import report_dict, scan
from ckpttui.jobs.average import average
from ckpttui.jobs.export import export
from ckpttui.jobs.select import select_last

DATA = Path(__file__).resolve().parents[1] / "data" / "speechbrain" / "save"


def test_last_two_average_to_a_recoverable_folder(tmp_path: Path) -> None:
    save = Path(shutil.copytree(DATA, tmp_path / "save"))
    chosen = select_last(save, 2)
    out = save / "CKPT+avg2"
    events = list(average(chosen.paths, out))
    assert events[-1].kind == "done"
    newest = chosen.paths[-1]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        p.name for p in newest.iterdir() if p.name != "optimizer.ckpt"
    )
    assert (out / "normalizer.ckpt").read_bytes() == (newest / "normalizer.ckpt").read_bytes()
    assert isinstance(torch.load(out / "normalizer.ckpt", weights_only=True)["count"], int)
    yaml_text = (out / "CKPT.yaml").read_text()
    assert yaml_text.startswith((newest / "CKPT.yaml").read_text())
    for module in ("embedding_model", "classifier"):
        ours = torch.load(out / f"{module}.ckpt", weights_only=True)
        inputs = [load(p / f"{module}.ckpt") for p in chosen.paths]
        assert list(ours) == list(inputs[0])
        for k, v in ours.items():
            if v.is_floating_point():
                assert torch.allclose(v, (inputs[0][k] + inputs[1][k]) / 2, atol=1e-6), k
    # among its siblings it is a complete, weights-only checkpoint, never a training candidate
    report = {c["path"]: c for c in report_dict(scan(save))["checkpoints"]}
    assert report["CKPT+avg2"]["complete"], report["CKPT+avg2"]["problems"]
    assert report["CKPT+avg2"]["categories"]["optimizer"]["bytes"] == 0
    assert "CKPT+avg2" not in {p.name for p in select_last(save, 3).paths}


def test_normalizer_export_keeps_its_count(tmp_path: Path) -> None:
    # InputNormalization._load_statistics_dict reads state["count"] (KeyError without it)
    src = sorted(DATA.iterdir())[-1] / "normalizer.ckpt"
    out = tmp_path / "normalizer.ckpt"
    list(export(src, out))
    ref = torch.load(src, weights_only=True)
    ours = torch.load(out, weights_only=True)
    assert list(ours) == list(ref) and ours["count"] == ref["count"]
    assert all(torch.equal(ours[k], v) for k, v in ref.items() if isinstance(v, torch.Tensor))
