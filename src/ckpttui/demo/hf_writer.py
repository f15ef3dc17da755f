"""Write the demo's transformers runs with the real libraries (transformers, peft), offline.

``write_hf_trainer_run`` and ``write_peft_adapter`` run their work in a child process
(``python -m ckpttui.demo.hf_writer <subcommand> ...``) so the caller (the CLI) never imports
torch. Models are built from tiny config objects: nothing is downloaded. The child-side builders
(``tiny_gpt2``, ``tokenizer``, ``dataset``, ``train_run``, ``peft_adapter``) are public because the
test fixtures (tests/fixtures/hf_writers.py) build their variants on them: BERT, ``.bin`` and
sharded folders, ``torch.distributed.checkpoint`` and plain ``torch.save`` files.

Library facts this module relies on (transformers 5.23, torch 2.13, peft 0.21): ``Trainer`` calls
``model.save_pretrained(dir, state_dict=..., is_main_process=...)`` without ``max_shard_size``
(default "50GB"), so it never shards a tiny model by itself, and transformers 5.x writes
safetensors only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "OFFLINE_ENV",
    "DemoWriterError",
    "child_env",
    "dataset",
    "peft_adapter",
    "run_child",
    "setup_child",
    "tiny_gpt2",
    "tokenizer",
    "train_run",
    "write_hf_trainer_run",
    "write_peft_adapter",
]

# src/ckpttui/demo/hf_writer.py -> src/
_SRC_DIR = Path(__file__).resolve().parents[2]
RESULT_PREFIX = "CKPTTUI_RESULT "
DEFAULT_TIMEOUT = 600.0

# Offline, quiet, CPU-only, no experiment trackers.
OFFLINE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "WANDB_DISABLED": "true",
    "WANDB_MODE": "disabled",
    "DISABLE_MLFLOW_INTEGRATION": "TRUE",
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
    "CUDA_VISIBLE_DEVICES": "",
    "DS_ACCELERATOR": "cpu",
    "PYTHONWARNINGS": "ignore",
}

# Tiny model sizes shared by every writer (GPT-2: ~32k parameters, ~120 KB in fp32).
VOCAB = 96
SEQ = 16


class DemoWriterError(RuntimeError):
    """A demo writer's child process failed; the message ends with its stderr."""


# ----------------------------------------------------------------------------- parent side


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Return the environment for a writer child: offline settings and PYTHONPATH with our src."""
    env = dict(os.environ)
    env.update(OFFLINE_ENV)
    env.setdefault("OMP_NUM_THREADS", "1")
    # peft keeps LoraConfig.target_modules in a set: a fixed hash seed writes the same
    # adapter_config.json on every run.
    env["PYTHONHASHSEED"] = "0"
    paths = [str(_SRC_DIR)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    if extra:
        env.update(extra)
    return env


def _python() -> str:
    """Return the interpreter for the child (CKPTTUI_DEMO_PYTHON overrides sys.executable)."""
    return os.environ.get("CKPTTUI_DEMO_PYTHON") or sys.executable


def run_child(
    module: str,
    subcommand: str,
    args: list[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Run ``python -m MODULE SUBCOMMAND ARGS`` and return the JSON of its result line."""
    cmd = [_python(), "-m", module, subcommand, *args]
    proc = subprocess.run(
        cmd,
        env=dict(env) if env is not None else child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-40:])
        raise DemoWriterError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{tail}")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            return result
    raise DemoWriterError(f"{' '.join(cmd)} printed no result line:\n{proc.stdout[-2000:]}")


def write_hf_trainer_run(out_dir: Path, *, max_steps: int = 6, save_steps: int = 2) -> Path:
    """Train a tiny GPT-2 with a real transformers Trainer; checkpoint-N/ plus a final save."""
    args = ["--out", str(out_dir), "--max-steps", str(max_steps), "--save-steps", str(save_steps)]
    return Path(run_child(__name__, "trainer", args)["out"])


def write_peft_adapter(out_dir: Path) -> Path:
    """Write a real peft LoRA adapter (adapter_config.json + adapter_model.safetensors)."""
    return Path(run_child(__name__, "peft", ["--out", str(out_dir)])["out"])


# ----------------------------------------------------------------------------- child side
# Everything below imports torch / transformers / peft inside the functions.


def setup_child() -> None:
    """Apply the offline environment and make torch small, single-threaded and deterministic."""
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)


def tiny_gpt2(seed: int = 0) -> Any:
    """Build a tiny GPT-2 LM with tied input/output embeddings (no download)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        n_positions=32,
        vocab_size=VOCAB,
        bos_token_id=VOCAB - 1,
        eos_token_id=VOCAB - 1,
        tie_word_embeddings=True,
    )
    return GPT2LMHeadModel(cfg)


def tokenizer(kind: str) -> Any:
    """Build a word-level fast tokenizer over the tiny vocabulary, so checkpoints carry one."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    specials = (
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] if kind == "bert" else ["<pad>", "<unk>"]
    )
    words = specials + [f"w{i}" for i in range(VOCAB - len(specials) - 1)]
    words.append("<|endoftext|>" if kind == "gpt2" else "w_last")
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(WordLevel(vocab, unk_token=specials[1]))
    tok.pre_tokenizer = WhitespaceSplit()
    if kind == "bert":
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            pad_token="[PAD]",
            unk_token="[UNK]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
    )


def dataset(n: int, kind: str, seed: int) -> Any:
    """Return a map-style dataset of n random token rows (labels = inputs, or masked for bert)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (n, SEQ), generator=g)
    if kind == "bert":
        labels = torch.where(torch.rand(n, SEQ, generator=g) < 0.3, ids, torch.full_like(ids, -100))
    else:
        labels = ids.clone()

    class _Rows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return n

        def __getitem__(self, i: int) -> dict[str, Any]:
            return {
                "input_ids": ids[i],
                "attention_mask": torch.ones_like(ids[i]),
                "labels": labels[i],
            }

    return _Rows()


def train_run(
    out_dir: Path,
    model: Any,
    kind: str,
    *,
    max_steps: int,
    save_steps: int,
    save_total_limit: int | None = None,
    do_eval: bool = True,
) -> Path:
    """Child: run Trainer on ``model``; it writes checkpoint-N/ every save_steps, then save_model.

    ``kind`` ("gpt2" or "bert") picks the tokenizer and the labels of the random dataset.
    """
    from transformers import Trainer, TrainingArguments

    if kind not in ("gpt2", "bert"):
        raise ValueError(f"kind must be 'gpt2' or 'bert', not {kind!r}")
    args = TrainingArguments(
        output_dir=str(out_dir),
        max_steps=max_steps,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=save_total_limit,
        eval_strategy="steps" if do_eval else "no",
        eval_steps=save_steps if do_eval else None,
        load_best_model_at_end=do_eval,
        metric_for_best_model="eval_loss" if do_eval else None,
        greater_is_better=False if do_eval else None,
        logging_strategy="steps",
        logging_steps=1,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=1e-3,
        warmup_steps=1,
        weight_decay=0.01,
        seed=0,
        data_seed=0,
        use_cpu=True,
        report_to="none",
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset(16, kind, seed=1),  # 4 steps per epoch: epoch 1.5 at step 6
        eval_dataset=dataset(8, kind, seed=2) if do_eval else None,
        processing_class=tokenizer(kind),
    )
    train_result = trainer.train()
    # What the transformers example scripts (run_clm.py, run_mlm.py) do at the end:
    # out_dir/{model.safetensors, config.json, training_args.bin, trainer_state.json,
    # train_results.json, all_results.json, tokenizer files}.
    trainer.save_model(str(out_dir))
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()
    return out_dir


def peft_adapter(out_dir: Path, *, safetensors: bool = True) -> Path:
    """Child: wrap a tiny GPT-2 in a peft LoRA, take 3 AdamW steps, save_pretrained the adapter."""
    import torch
    from peft import LoraConfig, get_peft_model

    base = tiny_gpt2()
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=["c_attn", "c_proj"],
        fan_in_fan_out=True,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, config)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(0, VOCAB, (4, SEQ), generator=torch.Generator().manual_seed(3))
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(str(out_dir), safe_serialization=safetensors)
    return out_dir


def files_under(root: Path) -> list[list[Any]]:
    """List [relative path, size] for every file under root."""
    return [
        [str(p.relative_to(root)), p.stat().st_size] for p in sorted(root.rglob("*")) if p.is_file()
    ]


def _parser() -> argparse.ArgumentParser:
    """Build the child's command-line parser."""
    p = argparse.ArgumentParser(
        prog="python -m ckpttui.demo.hf_writer", description="Write the demo's transformers runs."
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("trainer", help="transformers Trainer run with checkpoint-N/ folders")
    t.add_argument("--max-steps", type=int, default=6)
    t.add_argument("--save-steps", type=int, default=2)
    sub.add_parser("peft", help="peft LoRA adapter")
    for sp in sub.choices.values():
        sp.add_argument("--out", type=Path, required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    """Child entry point: run one writer and print a CKPTTUI_RESULT JSON line."""
    a = _parser().parse_args(argv)
    setup_child()
    out = a.out.resolve()
    t0 = time.perf_counter()
    if a.cmd == "trainer":
        train_run(out, tiny_gpt2(), "gpt2", max_steps=a.max_steps, save_steps=a.save_steps)
    else:
        peft_adapter(out)
    result = {"out": str(out), "seconds": round(time.perf_counter() - t0, 3)}
    result["files"] = files_under(out)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
