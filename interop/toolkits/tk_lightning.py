"""Lightning: ``Trainer.fit`` with two ``ModelCheckpoint`` callbacks, loaded back by
``LightningModule.load_from_checkpoint``."""

from __future__ import annotations

from pathlib import Path

from _side import settled_copy  # standard library only: safe in the driver too

NAME = "lightning"
LIGHT = True
BASE = "project"  # torch from the project's venv
PINS = ["lightning==2.6.6"]
VERSIONS = ["lightning", "torch"]
# Check name -> the recorded ckpttui fault it shows (issue 7); a PASS here means it was fixed.
KNOWN: dict[str, str] = {}


def _model_class():
    import lightning as L
    import torch
    from torch import nn

    class Tiny(L.LightningModule):
        def __init__(self, hidden: int = 16) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = nn.Sequential(
                nn.Linear(8, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, 2)
            )

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, _):
            x, y = batch
            loss = nn.functional.cross_entropy(self(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, _):
            x, y = batch
            self.log("val_loss", nn.functional.cross_entropy(self(x), y))

        def configure_optimizers(self):
            opt = torch.optim.AdamW(self.parameters(), lr=1e-2)
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1)}

    return Tiny


def train(work: Path) -> str:
    """Four epochs; every epoch kept in ``all/``, the best two by val_loss + last in ``top/``."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader, TensorDataset

    L.seed_everything(0)
    x = torch.randn(64, 8)
    y = (x.sum(1) > 0).long()
    data = DataLoader(TensorDataset(x, y), batch_size=16)
    every = ModelCheckpoint(dirpath=work / "all", filename="{epoch}-{step}", save_top_k=-1)
    top = ModelCheckpoint(
        dirpath=work / "top",
        filename="{epoch}-{val_loss:.4f}",
        monitor="val_loss",
        save_top_k=2,
        save_last=True,
    )
    trainer = L.Trainer(
        max_epochs=4,
        accelerator="cpu",
        devices=1,
        callbacks=[every, top],
        logger=CSVLogger(work / "logs"),
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    trainer.fit(_model_class()(), data, data)
    return f"{len(list((work / 'all').glob('*.ckpt')))} epoch files, best {top.best_model_path}"


def checks(work: Path) -> list[dict]:
    """The ckpttui commands and the loader that must accept each output."""
    last = sorted((work / "top").glob("last*.ckpt"))
    last_ckpt = last[0] if last else work / "top" / "last.ckpt"
    run = settled_copy(work / "all", work / "reclaim")
    run_training = settled_copy(work / "all", work / "reclaim_training")
    return [
        {
            "name": "reclaim --keep-last 1 (in place) -> load_from_checkpoint",
            "loader": "reclaim",
            "ckpttui": [["reclaim", run, "--keep-last", "1", "--keep-best", "0", "--yes"]],
        },
        {
            "name": "reclaim --drop training (in place) -> load_from_checkpoint",
            "loader": "reclaim_training",
            "ckpttui": [
                [
                    "reclaim",
                    run_training,
                    "--keep-last",
                    "0",
                    "--keep-best",
                    "0",
                    "--drop",
                    "training",
                    "--yes",
                ]
            ],
        },
        {
            "name": "average --last 2 -> load_from_checkpoint",
            "loader": "avg_last",
            "ckpttui": [
                ["average", work / "all", "--last", "2", "-o", work / "out" / "avg_last2.ckpt"]
            ],
        },
        {
            "name": "average --best 2 (monitor val_loss) -> load_from_checkpoint",
            "loader": "avg_best",
            "ckpttui": [
                ["average", work / "top", "--best", "2", "-o", work / "out" / "avg_best2.ckpt"]
            ],
        },
        {
            "name": "average --best 2 --metric val_loss -> load_from_checkpoint",
            "loader": "avg_best_metric",
            "ckpttui": [
                [
                    "average",
                    work / "top",
                    "--best",
                    "2",
                    "--metric",
                    "val_loss",
                    "-o",
                    work / "out" / "avg_best2_metric.ckpt",
                ]
            ],
        },
        {
            "name": "export slim .ckpt -> load_from_checkpoint",
            "loader": "slim",
            "ckpttui": [["export", last_ckpt, "-o", work / "out" / "slim.ckpt"]],
        },
        {
            "name": "export safetensors -> load_state_dict(strict)",
            "loader": "safetensors",
            "ckpttui": [["export", last_ckpt, "-o", work / "out" / "weights.safetensors"]],
        },
    ]


def _sd(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


def _epoch_files(work: Path) -> list[Path]:
    return sorted((work / "all").glob("*.ckpt"), key=lambda p: _sd(p)["global_step"])


def load_avg_last(work: Path) -> str:
    from _side import mean_of, same

    model = _model_class().load_from_checkpoint(work / "out" / "avg_last2.ckpt", map_location="cpu")
    newest = _epoch_files(work)[-2:]
    same(
        model.state_dict(), mean_of([_sd(p)["state_dict"] for p in newest]), "avg_last2", atol=1e-6
    )
    return f"loaded; equals the mean of {', '.join(p.name for p in newest)}"


def load_avg_best(work: Path, out: str = "avg_best2.ckpt") -> str:
    from _side import mean_of, same

    model = _model_class().load_from_checkpoint(work / "out" / out, map_location="cpu")
    cb = next(
        v
        for k, v in _sd(work / "top" / "last.ckpt")["callbacks"].items()
        if "ModelCheckpoint" in k and "val_loss" in k
    )
    best = sorted(cb["best_k_models"], key=lambda p: float(cb["best_k_models"][p]))
    files = [_sd(Path(p)) for p in sorted(best, key=lambda p: _sd(Path(p))["global_step"])]
    same(model.state_dict(), mean_of([f["state_dict"] for f in files]), "avg_best2", atol=1e-6)
    return f"loaded; equals the mean of the 2 best by val_loss ({', '.join(Path(p).name for p in best)})"


def load_avg_best_metric(work: Path) -> str:
    return load_avg_best(work, "avg_best2_metric.ckpt")


def load_slim(work: Path) -> str:
    from _side import same

    model = _model_class().load_from_checkpoint(work / "out" / "slim.ckpt", map_location="cpu")
    src = _sd(work / "top" / "last.ckpt")
    same(model.state_dict(), src["state_dict"], "slim")
    slim = _sd(work / "out" / "slim.ckpt")
    kept = [
        k
        for k in ("epoch", "global_step", "hyper_parameters", "pytorch-lightning_version")
        if k in slim
    ]
    return f"loaded, weights exact; keeps {', '.join(kept)}"


def load_reclaim(work: Path, name: str = "reclaim") -> str:
    from _side import same

    files = sorted((work / name).glob("*.ckpt"), key=lambda p: _sd(p)["global_step"])
    for path in files:
        model = _model_class().load_from_checkpoint(path, map_location="cpu")
        same(model.state_dict(), _sd(work / "all" / path.name)["state_dict"], path.name)
    slimmed = [p.name for p in files if "optimizer_states" not in _sd(p)]
    if name == "reclaim":
        assert slimmed == [p.name for p in files[:-1]], slimmed
        return f"each loads, weights exact; {len(slimmed)} slimmed, the newest kept whole"
    assert slimmed == [p.name for p in files], slimmed
    assert not any("lr_schedulers" in _sd(p) for p in files)
    return f"each loads, weights exact; all {len(slimmed)} slimmed, schedulers dropped too"


def load_reclaim_training(work: Path) -> str:
    return load_reclaim(work, "reclaim_training")


def load_safetensors(work: Path) -> str:
    from _side import same
    from safetensors.torch import load_file

    model = _model_class()()
    sd = load_file(work / "out" / "weights.safetensors")
    model.load_state_dict(sd, strict=True)
    same(model.state_dict(), _sd(work / "top" / "last.ckpt")["state_dict"], "safetensors")
    return "strict load, weights exact"


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from _side import main

    main(globals())
