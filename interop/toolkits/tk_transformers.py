"""transformers: ``Trainer`` on a tiny GPT-2 (tied embeddings), loaded back by ``from_pretrained``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

NAME = "transformers"
LIGHT = True
BASE = "project"  # the project's venv already holds these exact pins (constraints.txt)
PINS = ["transformers==5.23.0", "accelerate==1.15.0"]
VERSIONS = ["transformers", "accelerate", "torch", "safetensors"]
KNOWN: dict[str, str] = {}


def train(work: Path) -> str:
    """Six steps, a checkpoint and an evaluation every two steps; eval_loss is the best metric."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments, set_seed

    set_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    model = GPT2LMHeadModel(config)
    ids = torch.randint(0, 64, (32, 16))
    data = [{"input_ids": row, "labels": row} for row in ids]
    args = TrainingArguments(
        output_dir=str(work / "run"),
        max_steps=6,
        save_steps=2,
        eval_strategy="steps",
        eval_steps=2,
        logging_steps=1,
        metric_for_best_model="eval_loss",
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        seed=0,
    )
    Trainer(model=model, args=args, train_dataset=data, eval_dataset=data[:8]).train()
    return ", ".join(sorted(p.name for p in (work / "run").glob("checkpoint-*")))


def _steps(work: Path) -> list[Path]:
    return sorted((work / "run").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))


def checks(work: Path) -> list[dict]:
    """The ckpttui commands and the loader that must accept each output."""
    last = _steps(work)[-1]
    out = work / "out"
    return [
        {
            "name": "export --config -> from_pretrained",
            "loader": "hf_export",
            "ckpttui": [["export", last, "--config", last, "-o", out / "hf_export"]],
        },
        {
            "name": "export safetensors -> from_pretrained (config beside)",
            "loader": "st_export",
            "ckpttui": [["export", last, "-o", out / "st" / "model.safetensors"]],
        },
        {
            "name": "average --last 2 -> from_pretrained (config beside)",
            "loader": "avg_last",
            "ckpttui": [
                [
                    "average",
                    work / "run",
                    "--last",
                    "2",
                    "-o",
                    out / "avg_last" / "model.safetensors",
                ]
            ],
        },
        {
            "name": "average --best 2 (eval_loss) -> from_pretrained",
            "loader": "avg_best",
            "ckpttui": [
                [
                    "average",
                    work / "run",
                    "--best",
                    "2",
                    "-o",
                    out / "avg_best" / "model.safetensors",
                ]
            ],
        },
    ]


def _reference(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).state_dict()


def _load(folder: Path, config_from: Path):
    from transformers import AutoModelForCausalLM

    if not (folder / "config.json").exists():
        shutil.copy(config_from / "config.json", folder / "config.json")
    model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v and k != "error_msgs"} | (
        {"error_msgs": info["error_msgs"]} if info.get("error_msgs") else {}
    )
    if problems:
        raise AssertionError(f"from_pretrained({folder.name}) reports {problems}")
    return model.state_dict()


def load_hf_export(work: Path) -> str:
    from _side import same

    last = _steps(work)[-1]
    same(_load(work / "out" / "hf_export", last), _reference(last), "hf_export")
    return f"from_pretrained: no missing/unexpected keys, weights exact ({last.name}, tied lm_head)"


def load_st_export(work: Path) -> str:
    from _side import same

    last = _steps(work)[-1]
    same(_load(work / "out" / "st", last), _reference(last), "st_export")
    return f"from_pretrained: no missing/unexpected keys, weights exact ({last.name})"


def load_avg_last(work: Path) -> str:
    from _side import mean_of, same

    newest = _steps(work)[-2:]
    got = _load(work / "out" / "avg_last", newest[-1])
    same(got, mean_of([_reference(p) for p in newest]), "avg_last", atol=1e-6)
    return f"from_pretrained clean; equals the mean of {', '.join(p.name for p in newest)}"


def load_avg_best(work: Path) -> str:
    from _side import mean_of, same

    state = json.loads((_steps(work)[-1] / "trainer_state.json").read_text())
    losses = {e["step"]: e["eval_loss"] for e in state["log_history"] if "eval_loss" in e}
    best = sorted(sorted(losses, key=losses.get)[:2])
    folders = [work / "run" / f"checkpoint-{s}" for s in best]
    got = _load(work / "out" / "avg_best", folders[-1])
    same(got, mean_of([_reference(p) for p in folders]), "avg_best", atol=1e-6)
    return f"from_pretrained clean; equals the mean of the 2 lowest eval_loss ({', '.join(p.name for p in folders)})"


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from _side import main

    main(globals())
