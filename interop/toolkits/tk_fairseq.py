"""fairseq: ``fairseq-train`` (a tiny transformer LM, mid-epoch saves), loaded back by
``fairseq-train --restore-file`` and ``checkpoint_utils.load_model_ensemble_and_task``."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from _side import settled_copy  # standard library only: safe in the driver too

NAME = "fairseq"
LIGHT = False
BASE = "fresh"
# fairseq-fixed builds its C++ parts from source against the torch already installed.
PREINSTALL = ["torch==2.13.0", "cython", "numpy==2.1.3", "setuptools", "wheel"]
PIP_ARGS = ["--no-build-isolation"]
PINS = ["fairseq-fixed==0.12.3.1", "safetensors==0.8.0"]
VERSIONS = ["fairseq-fixed", "torch", "numpy"]
# Check name -> the recorded ckpttui fault it shows (issue 7); a PASS here means it was fixed.
KNOWN: dict[str, str] = {}

MODEL = [
    "--task",
    "language_modeling",
    "--arch",
    "transformer_lm",
    "--decoder-layers",
    "1",
    "--decoder-embed-dim",
    "16",
    "--decoder-ffn-embed-dim",
    "32",
    "--decoder-attention-heads",
    "2",
    "--tokens-per-sample",
    "16",
    "--max-tokens",
    "128",
    "--optimizer",
    "adam",
    "--lr",
    "0.001",
    "--cpu",
    "--no-progress-bar",
    "--log-format",
    "simple",
    "--log-interval",
    "1",
    "--seed",
    "1",
    "--num-workers",
    "0",
]


def _cli(name: str, *args: object, log: Path | None = None) -> str:
    """Run a fairseq console entry point (``fairseq-train`` ...) from this venv; return its output."""
    exe = Path(sys.executable).parent / name
    proc = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, check=False)
    out = proc.stdout + proc.stderr
    if log:
        log.write_text(out)
    if proc.returncode:
        lines = [ln for ln in out.splitlines() if ln.strip()]
        raise RuntimeError(f"{name} exited {proc.returncode}: {lines[-1] if lines else ''}")
    return out


def train(work: Path) -> str:
    """Generate a token corpus, binarize it, train 3 epochs saving every 5 updates too."""
    import random

    rng = random.Random(0)
    words = [f"w{i}" for i in range(40)]
    for split, n in (("train", 200), ("valid", 20)):
        lines = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 14))) for _ in range(n)]
        (work / f"{split}.txt").write_text("\n".join(lines) + "\n")
    _cli(
        "fairseq-preprocess",
        "--only-source",
        "--trainpref",
        work / "train.txt",
        "--validpref",
        work / "valid.txt",
        "--destdir",
        work / "data-bin",
        "--workers",
        "1",
    )
    _cli(
        "fairseq-train",
        work / "data-bin",
        *MODEL,
        "--max-epoch",
        "3",
        "--save-interval-updates",
        "5",
        "--save-dir",
        work / "ckpt",
        log=work / "train.log",
    )
    return ", ".join(sorted(p.name for p in (work / "ckpt").glob("*.pt")))


def _mid(work: Path) -> list[Path]:
    """Mid-epoch saves (checkpoint_E_U.pt) by update count."""
    files = [
        p
        for p in (work / "ckpt").glob("checkpoint_*_*.pt")
        if re.fullmatch(r"checkpoint_\d+_\d+\.pt", p.name)
    ]
    return sorted(files, key=lambda p: int(p.stem.split("_")[2]))


def checks(work: Path) -> list[dict]:
    """The ckpttui commands and the loader that must accept each output."""
    ckpt = work / "ckpt"
    out = work / "out"
    mid = _mid(work)
    mid_last = mid[-1] if mid else ckpt / "checkpoint_missing.pt"
    mid_two = mid[-2:] if len(mid) >= 2 else [mid_last]
    run = settled_copy(ckpt, work / "reclaim")
    return [
        {
            "name": "reclaim (in place) -> load_model_ensemble_and_task, fairseq-train --restore-file",
            "loader": "reclaim",
            "ckpttui": [["reclaim", run, "--yes"]],
        },
        {
            "name": "export mid-epoch checkpoint_E_U.pt -> fairseq-train --restore-file",
            "loader": "resume_mid_export",
            "ckpttui": [["export", mid_last, "-o", out / "mid_slim.pt"]],
        },
        {
            "name": "export end-of-epoch checkpoint2.pt -> fairseq-train --restore-file",
            "loader": "resume_epoch_export",
            "ckpttui": [["export", ckpt / "checkpoint2.pt", "-o", out / "epoch_slim.pt"]],
        },
        {
            "name": "average 2 mid-epoch files -> fairseq-train --restore-file",
            "loader": "resume_mid_avg",
            "ckpttui": [["average", *mid_two, "-o", out / "mid_avg.pt"]],
        },
        {
            "name": "average checkpoint1-3 = fairseq average_checkpoints -> load_model_ensemble_and_task",
            "loader": "avg_epochs",
            "ckpttui": [
                [
                    "average",
                    ckpt / "checkpoint1.pt",
                    ckpt / "checkpoint2.pt",
                    ckpt / "checkpoint3.pt",
                    "-o",
                    out / "avg3.pt",
                ]
            ],
        },
        {
            "name": "average --last 2 (run folder) -> load_model_ensemble_and_task",
            "loader": "avg_last",
            "ckpttui": [["average", ckpt, "--last", "2", "-o", out / "avg_last2.pt"]],
        },
        {
            "name": "export safetensors -> model.load_state_dict(strict)",
            "loader": "st_export",
            "ckpttui": [["export", ckpt / "checkpoint3.pt", "-o", out / "model.safetensors"]],
        },
    ]


def _resume(work: Path, name: str) -> str:
    out = work / "out"
    target = out / f"resume_{Path(name).stem}"
    log = _cli(
        "fairseq-train",
        work / "data-bin",
        *MODEL,
        "--max-epoch",
        "4",
        "--restore-file",
        out / name,
        "--reset-optimizer",
        "--save-dir",
        target,
        "--no-save",
        log=out / f"resume_{Path(name).stem}.log",
    )
    m = re.search(r"[Ll]oaded checkpoint (\S+) \(epoch (\d+) @ (\d+) updates\)", log)
    if not m:
        raise AssertionError("fairseq-train did not report loading the checkpoint")
    done = re.findall(r"end of epoch (\d+)", log)
    return f"fairseq-train resumed from {Path(m.group(1)).name} (epoch {m.group(2)} @ {m.group(3)} updates), trained to epoch {done[-1] if done else '?'}"


def load_resume_mid_export(work: Path) -> str:
    return _resume(work, "mid_slim.pt")


def load_resume_epoch_export(work: Path) -> str:
    return _resume(work, "epoch_slim.pt")


def load_resume_mid_avg(work: Path) -> str:
    return _resume(work, "mid_avg.pt")


def _ensemble(path: Path):
    from fairseq import checkpoint_utils

    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(path)])
    return models[0], task


def _fairseq_average(paths: list[Path]) -> dict:
    """fairseq's own scripts/average_checkpoints.py algorithm (fairseq's module when shipped)."""
    try:
        from scripts.average_checkpoints import average_checkpoints  # shipped in some wheels
    except ImportError:
        average_checkpoints = None
    if average_checkpoints is not None:
        return average_checkpoints([str(p) for p in paths])["model"]
    import torch

    params: dict = {}
    for p in paths:
        state = torch.load(p, map_location="cpu", weights_only=False)["model"]
        for k, v in state.items():
            v = v.clone().float() if isinstance(v, torch.HalfTensor) else v.clone()
            params[k] = v if k not in params else params[k] + v
    n = len(paths)
    return {k: (v / n if v.is_floating_point() else v // n) for k, v in params.items()}


def load_avg_epochs(work: Path) -> str:
    from _side import same

    model, task = _ensemble(work / "out" / "avg3.pt")
    want = _fairseq_average([work / "ckpt" / f"checkpoint{i}.pt" for i in (1, 2, 3)])
    same(model.state_dict(), want, "avg3")
    return f"load_model_ensemble_and_task: {type(model).__name__} + {type(task).__name__}; bit-equal to fairseq's average"


def load_avg_last(work: Path) -> str:
    from _side import same

    model, _ = _ensemble(work / "out" / "avg_last2.pt")
    want = _fairseq_average([work / "ckpt" / "checkpoint2.pt", work / "ckpt" / "checkpoint3.pt"])
    same(model.state_dict(), want, "avg_last2")
    return "loaded; equals fairseq's average of checkpoint2.pt, checkpoint3.pt"


def load_reclaim(work: Path) -> str:
    """Every checkpoint of the slimmed run loads with weights exact; training resumes from one."""
    import torch
    from _side import same

    slimmed = []
    files = sorted((work / "reclaim").glob("*.pt"))
    for path in files:
        model, _ = _ensemble(path)
        ref, _ = _ensemble(work / "ckpt" / path.name)
        same(model.state_dict(), ref.state_dict(), path.name)
        state = torch.load(path, map_location="cpu", weights_only=False)
        if not state.get("last_optimizer_state"):
            slimmed.append(path)
    if not slimmed or len(slimmed) == len(files):
        raise AssertionError(f"slimmed {[p.name for p in slimmed]} of {len(files)}")
    resumed = _resume(work, str(slimmed[0]))
    return (
        f"{len(files)} load, weights exact; slimmed {', '.join(p.name for p in slimmed)}; {resumed}"
    )


def load_st_export(work: Path) -> str:
    from _side import same
    from safetensors.torch import load_file

    model, _ = _ensemble(work / "ckpt" / "checkpoint3.pt")
    model.load_state_dict(load_file(work / "out" / "model.safetensors"), strict=True)
    ref, _ = _ensemble(work / "ckpt" / "checkpoint3.pt")
    same(model.state_dict(), ref.state_dict(), "safetensors")
    return "strict load, weights exact"


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    from _side import main

    main(globals())
