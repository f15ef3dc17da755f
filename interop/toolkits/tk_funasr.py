"""FunASR: its ``Trainer.save_checkpoint`` (``model.pt.epN``, ``model.pt``, ``model.pt.best``) on a
tiny model, loaded back by ``funasr.train_utils.load_pretrained_model``."""

from __future__ import annotations

import sys
from pathlib import Path

from _side import settled_copy  # standard library only: safe in the driver too

NAME = "funasr"
LIGHT = False
BASE = "project"  # torch from the project's venv
PINS = ["funasr==1.4.16"]
UNINSTALL = ["torchaudio"]  # no torchaudio build loads beside torch 2.13; the loader needs none
VERSIONS = ["funasr", "torch"]
KNOWN: dict[str, str] = {}


def _model():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def train(work: Path) -> str:
    """Three epochs by hand; FunASR's Trainer records val acc and saves each epoch its own way."""
    import torch
    from funasr.train_utils.trainer import Trainer
    from torch.nn import functional as F

    model = _model()
    optim = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optim, 1)
    trainer = Trainer(
        local_rank=0,
        output_dir=str(work / "exp"),
        device="cpu",
        max_epoch=3,
        keep_nbest_models=3,
        avg_keep_nbest_models_type="acc",
        resume=False,
    )
    x = torch.randn(64, 8)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    for epoch in range(1, 4):
        model.train()
        for i in range(0, 64, 16):
            loss = F.cross_entropy(model(x[i : i + 16]), y[i : i + 16])
            optim.zero_grad()
            loss.backward()
            optim.step()
        scheduler.step()
        model.eval()
        with torch.no_grad():
            acc = (model(x).argmax(1) == y).float().mean().item()
        trainer.val_acc_step_or_epoch[f"model.pt.ep{epoch}"] = acc + epoch * 1e-3 * (epoch != 2)
        trainer.val_loss_step_or_epoch[f"model.pt.ep{epoch}"] = loss.item()
        trainer.save_checkpoint(epoch, model=model, optim=optim, scheduler=scheduler)
    return ", ".join(sorted(p.name for p in (work / "exp").iterdir()))


def checks(work: Path) -> list[dict]:
    """The ckpttui commands and the loader that must accept each output."""
    exp, out = work / "exp", work / "out"
    run = settled_copy(work / "exp", work / "reclaim")
    return [
        {
            "name": "reclaim (keep newest + best val acc) -> load_pretrained_model",
            "loader": "reclaim",
            "ckpttui": [["reclaim", run, "--yes"]],
        },
        {
            "name": "average --best 2 = funasr average_checkpoints -> load_pretrained_model",
            "loader": "avg_best",
            "ckpttui": [["average", exp, "--best", "2", "-o", out / "model.pt.avg2"]],
        },
        {
            "name": "export model.pt.ep3 -> load_pretrained_model",
            "loader": "export",
            "ckpttui": [["export", exp / "model.pt.ep3", "-o", out / "model.pt.slim"]],
        },
        {
            "name": "export safetensors -> load_state_dict(strict)",
            "loader": "st",
            "ckpttui": [["export", exp / "model.pt.ep3", "-o", out / "model.safetensors"]],
        },
    ]


def _load(path: Path):
    from funasr.train_utils.load_pretrained_model import load_pretrained_model

    model = _model()
    for p in model.parameters():
        p.data.fill_(0.5)
    load_pretrained_model(str(path), model)
    return model.state_dict()


def _torch_load(path: Path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


def load_avg_best(work: Path) -> str:
    import shutil

    from _side import same
    from funasr.train_utils.average_nbest_models import average_checkpoints

    ref_dir = work / "out" / "funasr_avg"
    shutil.copytree(work / "exp", ref_dir)
    ref = _torch_load(average_checkpoints(str(ref_dir), 2))["state_dict"]
    got = _load(work / "out" / "model.pt.avg2")
    floats = {k: v for k, v in ref.items() if v.is_floating_point()}
    same({k: got[k] for k in floats}, floats, "avg2", atol=1e-6)
    return "load_pretrained_model: floats equal funasr's average_checkpoints(2) (integers: funasr sums, not compared)"


def load_export(work: Path) -> str:
    from _side import same

    same(
        _load(work / "out" / "model.pt.slim"),
        _torch_load(work / "exp" / "model.pt.ep3")["state_dict"],
        "slim",
    )
    return "load_pretrained_model: weights exact"


def load_reclaim(work: Path) -> str:
    from _side import same

    epochs = sorted((work / "reclaim").glob("model.pt.ep*"))
    slimmed = []
    for path in epochs:
        same(_load(path), _torch_load(work / "exp" / path.name)["state_dict"], path.name)
        if "optimizer" not in _torch_load(path):
            slimmed.append(path.name)
    assert slimmed and len(slimmed) < len(epochs), slimmed
    return f"load_pretrained_model: every epoch's weights exact; slimmed {', '.join(slimmed)}"


def load_st(work: Path) -> str:
    from _side import same
    from safetensors.torch import load_file

    model = _model()
    model.load_state_dict(load_file(work / "out" / "model.safetensors"), strict=True)
    same(
        model.state_dict(), _torch_load(work / "exp" / "model.pt.ep3")["state_dict"], "safetensors"
    )
    return "strict load, weights exact"


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    from _side import main

    main(globals())
