"""Roles a layout gives files and values: what users read in ``inspect``."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ckpttui.inventory import report_dict, scan


def _normalizer(path: Path) -> Path:
    # speechbrain/processing/features.py InputNormalization._save: the statistics and an int count
    torch.save({"count": 12, "glob_mean": torch.zeros(20), "glob_std": torch.ones(20)}, path)
    return path


def test_normalizer_is_needed_to_run_everywhere(tmp_path: Path) -> None:
    loose = _normalizer(tmp_path / "normalizer.ckpt")
    folder = tmp_path / "save" / "CKPT+2026-01-01+00-00-00+00"
    folder.mkdir(parents=True)
    (folder / "CKPT.yaml").write_text("end-of-epoch: true\nunixtime: 1.0\n")
    torch.save({"w": torch.ones(4)}, folder / "model.ckpt")
    _normalizer(folder / "normalizer.ckpt")
    for root in (loose, folder):
        report = report_dict(scan(root))
        (row,) = [f for f in report["files"] if f["path"] in ("", "normalizer.ckpt")]
        assert row["categories"]["other"]["bytes"] == 160, root
        assert row["parts"] == {"other/normalizer": 160}
        assert row["reclaimable_bytes"] == 0


def test_bottleneck_adapter_type_and_reduction_factor(tmp_path: Path) -> None:
    # adapters/loading.py AdapterLoader.save: adapter_config.json (build_full_config) + weights;
    # a bottleneck config (SeqBnConfig) has no "architecture", and 16 is its reduction factor.
    folder = tmp_path / "demo"
    folder.mkdir()
    config = {
        "mh_adapter": False,
        "output_adapter": True,
        "reduction_factor": 16,
        "non_linearity": "relu",
    }
    (folder / "adapter_config.json").write_text(
        json.dumps(
            {"config": config, "model_type": "whisper", "name": "demo", "version": "adapters.1.3.0"}
        )
    )
    torch.save(
        {"x.adapters.demo.adapter_down.0.weight": torch.ones(2, 32)}, folder / "pytorch_adapter.bin"
    )
    (ckpt,) = report_dict(scan(folder))["checkpoints"]
    assert ckpt["info"]["adapter_type"] == "bottleneck"
    assert ckpt["info"]["reduction_factor"] == 16
    assert ckpt["categories"]["weights"]["bytes"] == 256


ADAPTERS = Path(__file__).resolve().parents[1] / "data" / "adapters"


def test_real_adapters_saves() -> None:
    bn = report_dict(scan(ADAPTERS / "saved_bn"))["checkpoints"][0]
    assert (bn["layout"], bn["info"]["adapter_type"], bn["info"]["reduction_factor"]) == (
        "peft-adapter",
        "bottleneck",
        16,
    )
    lora = report_dict(scan(ADAPTERS / "saved_lora"))["checkpoints"][0]
    assert lora["info"]["adapter_type"] == "lora"
    # AdapterTrainer's checkpoint-N holds the adapter folder, never full weights: complete
    trainer = report_dict(scan(ADAPTERS / "run_bn" / "checkpoint-2"))["checkpoints"]
    outer = next(c for c in trainer if c["path"] == "")
    assert outer["layout"] == "hf-trainer" and outer["complete"], outer["problems"]
