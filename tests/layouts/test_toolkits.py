"""inspect --json on FunASR, WeNet, fairseq, SpeechBrain, Lightning and adapters layouts.

The files are real torch.save output after real AdamW steps, laid out as each toolkit writes them
(ckpttui/demo/toolkit_writers.py cites the upstream source per layout: FunASR
funasr/train_utils/trainer.py, WeNet wenet/utils/checkpoint.py, fairseq fairseq/checkpoint_utils.py,
SpeechBrain speechbrain/utils/checkpoints.py, Lightning checkpoint_connector.py, adapters
src/adapters/methods/bottleneck.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from expected import by_path, load_torch, tensors_in
from helpers import inspect_json


def _bytes(tensors: dict) -> int:  # type: ignore[type-arg]
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _under(path: Path, key: str) -> dict:  # type: ignore[type-arg]
    return tensors_in(load_torch(path)[key])


def test_funasr_epoch_checkpoint_breakdown(tk_root: Path) -> None:
    run = tk_root / "funasr"
    report = inspect_json(run)
    ckpts = by_path(report, "checkpoints")
    for epoch in (1, 2, 3):
        c = ckpts[f"model.pt.ep{epoch}"]
        path = run / f"model.pt.ep{epoch}"
        assert (c["layout"], c["epoch"], c["complete"]) == ("funasr", epoch, True)
        assert c["categories"]["weights"]["bytes"] == _bytes(_under(path, "state_dict"))
        assert c["categories"]["optimizer"]["bytes"] == _bytes(_under(path, "optimizer"))
        assert c["categories"]["optimizer"]["tensors"] == len(_under(path, "optimizer"))
    mid = ckpts["model.pt.ep1.3"]
    assert (mid["epoch"], mid["step"]) == (1, 3)
    avg = ckpts["model.pt.avg2"]
    assert avg["categories"]["optimizer"]["bytes"] == 0 and avg["info"]["averaged"] == 2
    assert "val_acc" in ckpts["model.pt"]["info"] or "val_loss" in ckpts["model.pt"]["info"]


def test_funasr_optimizer_is_two_thirds(tk_root: Path) -> None:
    (c,) = inspect_json(tk_root / "funasr" / "model.pt.ep3")["checkpoints"]
    cats = c["categories"]
    total = sum(v["bytes"] for v in cats.values())
    # AdamW: exp_avg + exp_avg_sq per fp32 weight (+ one 4-byte step per parameter)
    assert 0.66 <= cats["optimizer"]["bytes"] / total <= 0.70
    assert c["reclaimable_bytes"] == cats["optimizer"]["bytes"] + cats["other"]["bytes"]
    assert (
        c["parts"]["optimizer/exp_avg"]
        == c["parts"]["optimizer/exp_avg_sq"]
        == (cats["weights"]["bytes"])
    )


def test_wenet_run(tk_root: Path) -> None:
    report = inspect_json(tk_root / "wenet")
    ckpts = by_path(report, "checkpoints")
    for n in (0, 1, 2):
        c = ckpts[f"epoch_{n}.pt"]
        assert (c["layout"], c["epoch"], c["complete"]) == ("wenet", n, True)
        assert f"epoch_{n}.yaml" in c["files"]
        assert "loss_dict" in c["info"] and c["step"] is not None
        truth = tensors_in(load_torch(tk_root / "wenet" / f"epoch_{n}.pt"))
        assert c["categories"]["weights"] == {"tensors": len(truth), "bytes": _bytes(truth)}
    assert ckpts["avg_2.pt"]["layout"] == "wenet"
    # WeNet 3.x links final.pt to "{N}.pt", which does not exist next to epoch_N.pt files.
    errors = {e["path"]: e["error"] for e in report["errors"]}
    assert errors["final.pt"].startswith("dangling symlink")


def test_wenet_v2_names(tk_root: Path) -> None:
    ckpts = by_path(inspect_json(tk_root / "wenet_v2"), "checkpoints")
    assert (ckpts["1.pt"]["layout"], ckpts["1.pt"]["epoch"]) == ("wenet", 1)
    assert "cv_loss" in ckpts["1.pt"]["info"]
    assert ckpts["final.pt"]["layout"] == "wenet"


def test_fairseq_legacy_names_namespace(tk_root: Path) -> None:
    report = inspect_json(tk_root / "fairseq")
    files = by_path(report, "files")
    ckpts = by_path(report, "checkpoints")
    assert "argparse.Namespace" in files["checkpoint2.pt"]["unsafe_globals"]
    assert files["checkpoint2.pt"]["error"] is None
    c = ckpts["checkpoint2.pt"]
    assert (c["layout"], c["epoch"]) == ("fairseq", 2)
    assert c["step"] == c["info"]["num_updates"] > 0
    # The test reads fairseq's file with torch's full unpickler only because we wrote it ourselves.
    import torch

    raw = torch.load(tk_root / "fairseq" / "checkpoint2.pt", weights_only=False)
    assert c["categories"]["weights"]["bytes"] == _bytes(tensors_in(raw["model"]))
    assert c["categories"]["optimizer"]["bytes"] == _bytes(tensors_in(raw["last_optimizer_state"]))


def test_fairseq_hydra_mid_epoch(tk_root: Path) -> None:
    ckpts = by_path(inspect_json(tk_root / "fairseq_hydra"), "checkpoints")
    c = ckpts["checkpoint_2_6.pt"]
    assert (c["layout"], c["epoch"], c["step"], c["info"]["config"]) == ("fairseq", 2, 6, "cfg")


def test_speechbrain_folders(tk_root: Path, tmp_path: Path) -> None:
    save = tk_root / "speechbrain" / "save"
    report = inspect_json(save)
    ckpts = report["checkpoints"]
    assert len(ckpts) == 3
    for i, c in enumerate(sorted(ckpts, key=lambda c: c["path"]), start=1):
        assert (c["layout"], c["epoch"], c["complete"]) == ("speechbrain", i, True)
        assert c["info"]["end_of_epoch"] is True
        folder = save / c["path"]
        weights = _bytes(tensors_in(load_torch(folder / "model.ckpt"))) + _bytes(
            tensors_in(load_torch(folder / "wav2vec2.ckpt"))
        )
        assert c["categories"]["weights"]["bytes"] == weights
        assert c["categories"]["optimizer"]["bytes"] == _bytes(
            tensors_in(load_torch(folder / "optimizer.ckpt"))
        )
        # the input normaliser's statistics are "other", and needed to run the model
        assert c["parts"]["other/normalizer"] > 0
        assert c["reclaimable_bytes"] == c["categories"]["optimizer"]["bytes"] + (
            c["categories"]["other"]["bytes"] - c["parts"]["other/normalizer"]
        )
    # A save interrupted after CKPT.yaml (written first) lacks recoverables its siblings have.
    copy = tmp_path / "save"
    shutil.copytree(save, copy)
    last = sorted(copy.iterdir())[-1]
    (last / "optimizer.ckpt").unlink()
    c = by_path(inspect_json(copy), "checkpoints")[last.name]
    assert c["complete"] is False and "optimizer.ckpt" in c["problems"][0]


def test_lightning(tk_root: Path) -> None:
    report = inspect_json(tk_root / "lightning")
    (c, last) = sorted(report["checkpoints"], key=lambda c: c["path"])
    assert (c["layout"], c["epoch"], c["step"]) == ("lightning", 2, 30)
    path = tk_root / "lightning" / c["path"]
    assert c["categories"]["weights"]["bytes"] == _bytes(_under(path, "state_dict"))
    assert c["categories"]["optimizer"]["bytes"] == _bytes(_under(path, "optimizer_states"))
    assert c["categories"]["other"]["tensors"] >= 1  # ModelCheckpoint's kth_value


def test_whisper_bottleneck_adapters_are_a_part(tk_root: Path) -> None:
    folder = tk_root / "whisper_adapters"
    report = inspect_json(folder)
    c = by_path(report, "checkpoints")["whisper_with_adapters.pt"]
    truth = tensors_in(load_torch(folder / "whisper_with_adapters.pt"))
    adapters = {k: t for k, t in truth.items() if ".adapters." in k[0]}
    assert adapters and c["parts"]["weights/adapter"] == _bytes(adapters)
    assert c["parts"]["weights/base"] == _bytes(truth) - _bytes(adapters)
    f = by_path(report, "files")["whisper_with_adapters.pt"]
    assert f["storage_bytes"] < f["tensor_bytes"]  # proj_out is tied to the decoder embedding
    saved = by_path(report, "checkpoints")["demo"]
    assert saved["complete"] and saved["info"]["library"] == "adapters"
