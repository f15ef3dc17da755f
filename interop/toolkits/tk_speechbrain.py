"""SpeechBrain: ``Brain.fit`` with a ``Checkpointer`` (model + ``InputNormalization``), loaded back
by ``Checkpointer.recover_if_possible`` and ``Pretrainer``."""

from __future__ import annotations

from pathlib import Path

from _side import settled_copy  # standard library only: safe in the driver too

NAME = "speechbrain"
LIGHT = False
BASE = "fresh"
# torchaudio's compiled part loads only beside the torch it was built for.
PREINSTALL = ["torch==2.11.0", "torchaudio==2.11.0"]
PINS = ["speechbrain==1.1.2"]
VERSIONS = ["speechbrain", "torch", "torchaudio"]
# Check name -> the recorded ckpttui fault it shows (issue 7); a PASS here means it was fixed.
KNOWN: dict[str, str] = {}

MODULES = ("embedding_model", "classifier")


def _modules():
    from speechbrain.processing.features import InputNormalization
    from torch import nn

    emb = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU())
    return {
        "embedding_model": emb,
        "classifier": nn.Linear(16, 2),
        "normalizer": InputNormalization(),
    }


def train(work: Path) -> str:
    """Three epochs of ``Brain.fit``; the Checkpointer saves a ``CKPT+`` folder after each."""
    import speechbrain as sb
    import torch
    from speechbrain.utils.checkpoints import Checkpointer
    from speechbrain.utils.epoch_loop import EpochCounter
    from torch.nn import functional as F
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)

    class Tiny(sb.Brain):
        def compute_forward(self, batch, stage):
            x, _ = batch
            feats = self.modules.normalizer(
                x, torch.ones(x.shape[0]), epoch=self.hparams.counter.current
            )
            return self.modules.classifier(self.modules.embedding_model(feats.mean(1)))

        def compute_objectives(self, predictions, batch, stage):
            return F.cross_entropy(predictions, batch[1])

        def on_stage_end(self, stage, stage_loss, epoch=None):
            if stage == sb.Stage.VALID:
                self.checkpointer.save_checkpoint(meta={"loss": stage_loss})

    x = torch.randn(48, 10, 8) * 3 + 1
    y = (x.mean((1, 2)) > 1).long()
    data = DataLoader(TensorDataset(x, y), batch_size=8)
    modules = _modules()
    counter = EpochCounter(limit=3)
    ckpt = Checkpointer(work / "save", recoverables={**modules, "counter": counter})
    brain = Tiny(
        modules=modules,
        opt_class=lambda params: torch.optim.Adam(params, lr=1e-2),
        hparams={"counter": counter},
        run_opts={"device": "cpu"},
        checkpointer=ckpt,
    )
    brain.fit(counter, data, data, progressbar=False)
    return ", ".join(sorted(p.name for p in (work / "save").glob("CKPT+*")))


def _ckpts(work: Path) -> list[Path]:
    """The CKPT+ folders in training order (CKPT.yaml's unixtime)."""
    import yaml

    folders = list((work / "save").glob("CKPT+*"))
    return sorted(folders, key=lambda p: yaml.safe_load((p / "CKPT.yaml").read_text())["unixtime"])


def checks(work: Path) -> list[dict]:
    """The ckpttui commands and the loader that must accept each output."""
    save = work / "save"
    folders = _ckpts(work)
    last = folders[-1] if folders else save / "CKPT+missing"
    out = work / "out"
    run = settled_copy(save, work / "reclaim")
    return [
        {
            "name": "reclaim CKPT+ folders (in place) -> Pretrainer, recover_if_possible",
            "loader": "reclaim",
            "ckpttui": [["reclaim", run, "--keep-best", "0", "--yes"]],
        },
        {
            "name": "export embedding_model.ckpt -> Pretrainer",
            "loader": "export_module",
            "ckpttui": [
                [
                    "export",
                    last / "embedding_model.ckpt",
                    "-o",
                    out / "export" / "embedding_model.ckpt",
                ]
            ],
        },
        {
            "name": "export normalizer.ckpt -> Pretrainer",
            "loader": "export_normalizer",
            "ckpttui": [
                ["export", last / "normalizer.ckpt", "-o", out / "export" / "normalizer.ckpt"]
            ],
        },
        {
            "name": "export CKPT+ folder -> recover_if_possible (normalizer included)",
            "loader": "export_folder",
            "ckpttui": [["export", last, "-o", out / "exported" / "CKPT+exported"]],
        },
        {
            "name": "average --last 2 CKPT+ folders -> recover_if_possible = average_checkpoints",
            "loader": "avg_recover",
            "ckpttui": [
                ["average", save, "--last", "2", "-o", out / "averaged" / "CKPT+avg-last2"]
            ],
        },
        {
            "name": "average --last 2 CKPT+ folders -> Pretrainer (normalizer included)",
            "loader": "avg_pretrainer",
            "ckpttui": [],
            "after": "average --last 2 CKPT+ folders -> recover_if_possible = average_checkpoints",
        },
    ]


def _torch_load(path: Path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


def _pretrain(folder: Path, names: tuple[str, ...]) -> dict:
    from speechbrain.utils.parameter_transfer import Pretrainer

    modules = _modules()
    loadables = {n: modules[n] for n in names}
    pre = Pretrainer(
        collect_in=folder.parent / f"collect_{folder.name}",
        loadables=loadables,
        paths={n: str(folder / f"{n}.ckpt") for n in names},
    )
    pre.collect_files()
    pre.load_collected()
    return modules


def _same_normalizer(norm, want: dict) -> None:
    import torch

    if norm.count != want["count"] or not isinstance(norm.count, int):
        raise AssertionError(f"normalizer count {norm.count!r}, want {want['count']!r}")
    for key in ("glob_mean", "glob_std"):
        if not torch.equal(getattr(norm, key), want[key]):
            raise AssertionError(f"normalizer {key} differs")


def load_export_module(work: Path) -> str:
    from _side import same

    last = _ckpts(work)[-1]
    modules = _pretrain(work / "out" / "export", ("embedding_model",))
    same(
        modules["embedding_model"].state_dict(),
        _torch_load(last / "embedding_model.ckpt"),
        "embedding_model",
    )
    return f"Pretrainer loaded embedding_model, exact ({last.name})"


def load_export_normalizer(work: Path) -> str:
    last = _ckpts(work)[-1]
    modules = _pretrain(work / "out" / "export", ("normalizer",))
    _same_normalizer(modules["normalizer"], _torch_load(last / "normalizer.ckpt"))
    return f"Pretrainer loaded normalizer: count {modules['normalizer'].count}, statistics exact"


def _recover(folder: Path) -> dict:
    from speechbrain.utils.checkpoints import Checkpointer

    modules = _modules()
    found = Checkpointer(folder, recoverables=modules).recover_if_possible()
    if found is None:
        raise AssertionError(
            f"recover_if_possible found no checkpoint in {folder}: {sorted(p.name for p in folder.iterdir())}"
        )
    return modules


def load_export_folder(work: Path) -> str:
    from _side import same

    last = _ckpts(work)[-1]
    modules = _recover(work / "out" / "exported")
    for name in MODULES:
        same(modules[name].state_dict(), _torch_load(last / f"{name}.ckpt"), name)
    _same_normalizer(modules["normalizer"], _torch_load(last / "normalizer.ckpt"))
    return f"recover_if_possible loaded {', '.join(MODULES)} + normalizer, exact"


def _sb_average(work: Path) -> tuple[dict, dict]:
    """SpeechBrain's own average of the two newest CKPT+ folders, per module, as loaded.

    Only floating tensors are compared: SpeechBrain divides integer buffers (num_batches_tracked
    comes back as a float mean), ckpttui keeps the newest input's, as its notes say.
    """
    from speechbrain.utils.checkpoints import Checkpointer, average_checkpoints

    ckpts = Checkpointer(work / "save").find_checkpoints(max_num_checkpoints=2)
    want = {}
    for name in MODULES:
        module = _modules()[name]
        module.load_state_dict(average_checkpoints(ckpts, name))
        want[name] = {k: v for k, v in module.state_dict().items() if v.is_floating_point()}
    newest = max(ckpts, key=lambda c: c.meta["unixtime"])
    return want, _torch_load(newest.paramfiles["normalizer"])


def load_avg_recover(work: Path) -> str:
    from _side import same

    want, norm = _sb_average(work)
    modules = _recover(work / "out" / "averaged")
    for name in MODULES:
        got = modules[name].state_dict()
        same({k: got[k] for k in want[name]}, want[name], name, atol=1e-6)
    _same_normalizer(modules["normalizer"], norm)
    return (
        "recover_if_possible: modules = speechbrain average_checkpoints, normalizer from the newest"
    )


def load_reclaim(work: Path) -> str:
    """Each slimmed CKPT+ folder loads in Pretrainer (normalizer too), weights exact; the run
    still recovers."""
    from _side import same

    slimmed = []
    for folder in sorted((work / "reclaim").glob("CKPT+*")):
        original = work / "save" / folder.name
        modules = _pretrain(folder, (*MODULES, "normalizer"))
        for name in MODULES:
            same(modules[name].state_dict(), _torch_load(original / f"{name}.ckpt"), name)
        _same_normalizer(modules["normalizer"], _torch_load(original / "normalizer.ckpt"))
        if not (folder / "optimizer.ckpt").exists():
            slimmed.append(folder.name)
    if not slimmed:
        raise AssertionError("no CKPT+ folder was slimmed")
    _recover(work / "reclaim")
    return f"Pretrainer loads every folder exactly; slimmed {len(slimmed)}; recover_if_possible ok"


def load_avg_pretrainer(work: Path) -> str:
    from _side import same

    want, norm = _sb_average(work)
    modules = _pretrain(work / "out" / "averaged" / "CKPT+avg-last2", (*MODULES, "normalizer"))
    for name in MODULES:
        got = modules[name].state_dict()
        same({k: got[k] for k in want[name]}, want[name], name, atol=1e-6)
    _same_normalizer(modules["normalizer"], norm)
    return "Pretrainer: modules = speechbrain average_checkpoints, normalizer from the newest"


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from _side import main

    main(globals())
