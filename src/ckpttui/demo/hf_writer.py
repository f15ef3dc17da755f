"""Write real checkpoints with the real libraries (transformers, peft, torch), on the CPU, offline.

Every public ``write_*`` function runs its work in a child process
(``python -m ckpttui.demo.hf_writer <subcommand> ...``) so the caller (pytest, the CLI) never
imports torch. Models are built from tiny config objects: nothing is downloaded. What each writer
produces, and what the files hold, is written up in notes/hf_dcp_torch.md.

Library facts this module relies on (transformers 5.23, torch 2.13, peft 0.21):
- transformers 5.x ``save_pretrained`` writes safetensors only: ``safe_serialization=False`` is
  silently ignored and ``TrainingArguments`` has no ``save_safetensors`` any more. So
  ``pytorch_model*.bin`` folders (what transformers 4.x wrote) are written here with
  ``huggingface_hub.save_torch_state_dict(safe_serialization=False)``: the same shard split and
  one ``torch.save`` per shard that 4.x used. transformers 5.x still loads them
  (``from_pretrained``, ``Trainer`` resume and load-best-model).
- ``Trainer`` calls ``model.save_pretrained(dir, state_dict=..., is_main_process=...)`` without
  ``max_shard_size`` (default "50GB"), so it never shards a tiny model by itself. For sharded or
  ``.bin`` weights inside ``checkpoint-N/`` we replace ``save_pretrained`` on the model *instance*;
  everything else in the folder (optimizer.pt, scheduler.pt, rng_state.pth, trainer_state.json,
  training_args.bin) is still written by ``Trainer`` itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "DemoWriterError",
    "child_env",
    "write_all",
    "write_dcp",
    "write_hf_model_folder",
    "write_hf_trainer_run",
    "write_peft_adapter",
    "write_torch_files",
]

# src/ckpttui/demo/hf_writer.py -> src/
_SRC_DIR = Path(__file__).resolve().parents[2]
_RESULT_PREFIX = "CKPTTUI_RESULT "
_DEFAULT_TIMEOUT = 600.0

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
_VOCAB = 96
_SEQ = 16


class DemoWriterError(RuntimeError):
    """A demo writer's child process failed; the message ends with its stderr."""


# ----------------------------------------------------------------------------- parent side


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Return the environment for a writer child: offline settings and PYTHONPATH with our src."""
    env = dict(os.environ)
    env.update(OFFLINE_ENV)
    env.setdefault("OMP_NUM_THREADS", "1")
    paths = [str(_SRC_DIR)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    if extra:
        env.update(extra)
    return env


def _python() -> str:
    """Return the interpreter for the child (CKPTTUI_DEMO_PYTHON overrides sys.executable)."""
    return os.environ.get("CKPTTUI_DEMO_PYTHON") or sys.executable


def _run_child(
    subcommand: str, args: list[str], timeout: float = _DEFAULT_TIMEOUT
) -> dict[str, Any]:
    """Run ``python -m ckpttui.demo.hf_writer SUBCOMMAND ARGS`` and return its result JSON."""
    cmd = [_python(), "-m", "ckpttui.demo.hf_writer", subcommand, *args]
    proc = subprocess.run(
        cmd, env=child_env(), capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-40:])
        raise DemoWriterError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{tail}")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_RESULT_PREFIX):
            return json.loads(line[len(_RESULT_PREFIX) :])
    raise DemoWriterError(f"{' '.join(cmd)} printed no result line:\n{proc.stdout[-2000:]}")


def write_hf_trainer_run(
    out_dir: Path,
    *,
    max_steps: int = 6,
    save_steps: int = 2,
    model: Literal["gpt2", "bert"] = "gpt2",
    save_total_limit: int | None = None,
    use_safetensors: bool = True,
    eval: bool = True,
    max_shard_size: int | str | None = None,
) -> Path:
    """Train a tiny gpt2/bert with a real transformers Trainer; checkpoint-N/ plus a final save."""
    args = ["--out", str(out_dir), "--max-steps", str(max_steps), "--save-steps", str(save_steps)]
    args += ["--model", model]
    if save_total_limit is not None:
        args += ["--save-total-limit", str(save_total_limit)]
    if not use_safetensors:
        args.append("--bin")
    if not eval:
        args.append("--no-eval")
    if max_shard_size is not None:
        args += ["--max-shard-size", str(max_shard_size)]
    return Path(_run_child("trainer", args)["out"])


def write_hf_model_folder(out_dir: Path, *, sharded: bool, safetensors: bool) -> Path:
    """Write a tiny GPT-2 model folder: model*.safetensors or pytorch_model*.bin (+ index)."""
    args = ["--out", str(out_dir)]
    if sharded:
        args.append("--sharded")
    if not safetensors:
        args.append("--bin")
    return Path(_run_child("model-folder", args)["out"])


def write_peft_adapter(out_dir: Path, *, safetensors: bool = True) -> Path:
    """Write a real peft LoRA adapter (adapter_config.json + adapter_model.safetensors/.bin)."""
    args = ["--out", str(out_dir)] + ([] if safetensors else ["--bin"])
    return Path(_run_child("peft", args)["out"])


def write_dcp(out_dir: Path, *, use_get_state_dict: bool = True) -> Path:
    """Write a torch.distributed.checkpoint folder (.metadata + __0_0.distcp) of model + AdamW."""
    args = ["--out", str(out_dir)] + ([] if use_get_state_dict else ["--plain"])
    return Path(_run_child("dcp", args)["out"])


def write_torch_files(out_dir: Path) -> Path:
    """Write state.pt (torch.save zip format) and state_legacy.pt (legacy format) into out_dir."""
    return Path(_run_child("torch-files", ["--out", str(out_dir)])["out"])


def write_all(root: Path, *, timings: dict[str, float] | None = None) -> dict[str, Path]:
    """Write every demo checkpoint under root in one child process (peft ones only if installed)."""
    result = _run_child("all", ["--out", str(root)], timeout=2 * _DEFAULT_TIMEOUT)
    if timings is not None:
        timings.update(result["seconds_each"])
    return {name: Path(p) for name, p in result["paths"].items()}


# ----------------------------------------------------------------------------- child side
# Everything below imports torch / transformers / peft inside the functions.


def _setup_child() -> None:
    """Apply the offline environment and make torch small, single-threaded and deterministic."""
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)


def _gpt2(seed: int = 0) -> Any:
    """Build a tiny GPT-2 LM with tied input/output embeddings (no download)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        n_positions=32,
        vocab_size=_VOCAB,
        bos_token_id=_VOCAB - 1,
        eos_token_id=_VOCAB - 1,
        tie_word_embeddings=True,
    )
    return GPT2LMHeadModel(cfg)


def _bert(seed: int = 0) -> Any:
    """Build a tiny BERT masked LM (decoder weight and bias tied) without a download."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=_VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        pad_token_id=0,
    )
    return BertForMaskedLM(cfg)


def _tokenizer(kind: str) -> Any:
    """Build a word-level fast tokenizer over the tiny vocabulary, so checkpoints carry one."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    specials = (
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] if kind == "bert" else ["<pad>", "<unk>"]
    )
    words = specials + [f"w{i}" for i in range(_VOCAB - len(specials) - 1)]
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


def _dataset(n: int, kind: str, seed: int) -> Any:
    """Return a map-style dataset of n random token rows (labels = inputs, or masked for bert)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, _VOCAB, (n, _SEQ), generator=g)
    if kind == "bert":
        labels = torch.where(
            torch.rand(n, _SEQ, generator=g) < 0.3, ids, torch.full_like(ids, -100)
        )
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


def _save_bin_folder(
    model: Any, save_directory: str | Path, state_dict: Any, max_shard_size: Any
) -> None:
    """Write pytorch_model[-0000i-of-0000N].bin (+ index), config and generation config."""
    from huggingface_hub import save_torch_state_dict

    os.makedirs(save_directory, exist_ok=True)
    sd = model.state_dict() if state_dict is None else state_dict
    # Keeps tied tensors (lm_head.weight aliases transformer.wte.weight) like transformers 4.x did.
    save_torch_state_dict(
        sd,
        save_directory,
        filename_pattern="pytorch_model{suffix}.bin",
        max_shard_size=max_shard_size if max_shard_size is not None else "50GB",
        safe_serialization=False,
    )
    # The two config fields transformers' own save_pretrained sets before writing config.json.
    model.config.dtype = str(model.dtype).split(".")[1]
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(save_directory)
    if getattr(model, "generation_config", None) is not None and model.can_generate():
        model.generation_config.save_pretrained(save_directory)


def _patch_save_pretrained(model: Any, *, max_shard_size: Any, use_safetensors: bool) -> None:
    """Make this model instance's save_pretrained shard and/or write .bin (Trainer can't)."""
    if use_safetensors and max_shard_size is None:
        return
    original = model.save_pretrained

    def save_pretrained(save_directory: Any, *args: Any, **kwargs: Any) -> None:
        if use_safetensors:
            kwargs["max_shard_size"] = max_shard_size
            return original(save_directory, *args, **kwargs)
        _save_bin_folder(model, save_directory, kwargs.get("state_dict"), max_shard_size)
        return None

    model.save_pretrained = save_pretrained


def _shard_size(value: str | None) -> int | str | None:
    """Parse --max-shard-size: plain integers are bytes, anything else ("40KB") passes through."""
    if value is None:
        return None
    return int(value) if value.isdigit() else value


def _do_trainer(
    out_dir: Path,
    *,
    max_steps: int,
    save_steps: int,
    model_kind: str,
    save_total_limit: int | None,
    use_safetensors: bool,
    do_eval: bool,
    max_shard_size: int | str | None,
) -> Path:
    """Child: run Trainer; it writes checkpoint-N/ every save_steps, then save_model(out_dir)."""
    from transformers import Trainer, TrainingArguments

    if model_kind not in ("gpt2", "bert"):
        raise ValueError(f"model must be 'gpt2' or 'bert', not {model_kind!r}")
    model = _gpt2() if model_kind == "gpt2" else _bert()
    _patch_save_pretrained(model, max_shard_size=max_shard_size, use_safetensors=use_safetensors)
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
        train_dataset=_dataset(16, model_kind, seed=1),  # 4 steps per epoch: epoch 1.5 at step 6
        eval_dataset=_dataset(8, model_kind, seed=2) if do_eval else None,
        processing_class=_tokenizer(model_kind),
    )
    train_result = trainer.train()
    # What the transformers example scripts (run_clm.py, run_mlm.py) do at the end:
    # out_dir/{model.safetensors, config.json, training_args.bin, trainer_state.json,
    # train_results.json, all_results.json, tokenizer files}.
    trainer.save_model(str(out_dir))
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()
    return out_dir


def _do_model_folder(out_dir: Path, *, sharded: bool, safetensors: bool) -> Path:
    """Child: save a tiny GPT-2 as a model folder, >= 2 shards (40 KB each) when sharded."""
    model = _gpt2()
    shard = "40KB" if sharded else "50GB"
    if safetensors:
        model.save_pretrained(str(out_dir), max_shard_size=shard)
    else:
        _save_bin_folder(model, out_dir, None, shard)
    return out_dir


def _do_peft(out_dir: Path, *, safetensors: bool) -> Path:
    """Child: wrap a tiny GPT-2 in a peft LoRA, take 3 AdamW steps, save_pretrained the adapter."""
    import torch
    from peft import LoraConfig, get_peft_model

    base = _gpt2()
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
    ids = torch.randint(0, _VOCAB, (4, _SEQ), generator=torch.Generator().manual_seed(3))
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(str(out_dir), safe_serialization=safetensors)
    return out_dir


def _small_net() -> Any:
    """Return a small nn.Module with a tied head, a bf16 buffer and an int64 buffer."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(16, 8)
            self.fc = nn.Linear(8, 8)
            self.head = nn.Linear(8, 16, bias=False)
            self.head.weight = self.emb.weight  # tied: one storage, two names
            self.register_buffer("scale", torch.linspace(0.5, 1.5, 8).to(torch.bfloat16))
            self.register_buffer("num_batches", torch.tensor(0, dtype=torch.int64))

        def forward(self, x: Any) -> Any:
            self.num_batches += 1
            return self.head(torch.relu(self.fc(self.emb(x))) * self.scale.float())

    torch.manual_seed(0)
    return Net()


def _train_small(net: Any, steps: int = 3) -> Any:
    """Take real AdamW steps on net and return the optimizer."""
    import torch

    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(4)
    for _ in range(steps):
        x = torch.randint(0, 16, (4, 5), generator=g)
        net(x).logsumexp(-1).mean().backward()
        opt.step()
        opt.zero_grad()
    return opt


def _do_dcp(out_dir: Path, *, use_get_state_dict: bool) -> Path:
    """Child: dcp.save({"model", "optim"}) without a process group after real AdamW steps."""
    import torch.distributed.checkpoint as dcp

    net = _small_net()
    opt = _train_small(net)
    if use_get_state_dict:
        # Works without a process group in torch 2.13: FQN-keyed optimizer state.
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(net, opt)
    else:
        model_sd, optim_sd = net.state_dict(), opt.state_dict()  # optimizer keyed by param index
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(out_dir))
    return out_dir


def _do_torch_files(out_dir: Path) -> Path:
    """Child: torch.save one state as zip (state.pt) and in the legacy format (state_legacy.pt)."""
    from collections import OrderedDict

    import torch
    from torch import nn

    net = _small_net()
    opt = _train_small(net)
    model_sd = net.state_dict()  # OrderedDict; head.weight shares emb.weight's storage
    weight = model_sd["fc.weight"]
    state = {
        "model": model_sd,
        "optimizer": opt.state_dict(),
        "extra": OrderedDict(
            bf16=torch.arange(6, dtype=torch.float32).reshape(2, 3).to(torch.bfloat16),
            view=weight[2:5],  # a view into fc.weight's storage (storage offset 16)
            transposed=weight.t(),  # same storage, non-contiguous strides
            scalar=torch.tensor(3.5),  # 0-d
            int64=torch.arange(5, dtype=torch.int64),
            param=nn.Parameter(torch.ones(3)),  # pickles via torch._utils._rebuild_parameter
        ),
        "epoch": 3,
        "step": 12,
        "meta": {"note": "ckpttui demo", "lrs": [0.01, 0.005], "nested": {"ok": True}},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(state, out_dir / "state.pt")
    torch.save(state, out_dir / "state_legacy.pt", _use_new_zipfile_serialization=False)
    return out_dir


def _files(root: Path) -> list[list[Any]]:
    """List [relative path, size] for every file under root."""
    return [
        [str(p.relative_to(root)), p.stat().st_size] for p in sorted(root.rglob("*")) if p.is_file()
    ]


def _do_all(root: Path, seconds: dict[str, float]) -> dict[str, str]:
    """Child: run every writer under root (one process, one torch import); fill seconds."""
    from functools import partial

    trainer = partial(_do_trainer, save_steps=2, save_total_limit=None, use_safetensors=True)
    trainer = partial(trainer, do_eval=True, max_shard_size=None)
    jobs: dict[str, Any] = {
        "trainer_gpt2": partial(trainer, max_steps=6, model_kind="gpt2"),
        "trainer_bert_limit2_noeval": partial(
            trainer, max_steps=6, model_kind="bert", save_total_limit=2, do_eval=False
        ),
        "trainer_gpt2_sharded": partial(
            trainer, max_steps=4, model_kind="gpt2", max_shard_size="40KB"
        ),
        "trainer_gpt2_bin": partial(trainer, max_steps=4, model_kind="gpt2", use_safetensors=False),
        "model_safetensors": lambda p: _do_model_folder(p, sharded=False, safetensors=True),
        "model_safetensors_sharded": lambda p: _do_model_folder(p, sharded=True, safetensors=True),
        "model_bin": lambda p: _do_model_folder(p, sharded=False, safetensors=False),
        "model_bin_sharded": lambda p: _do_model_folder(p, sharded=True, safetensors=False),
        "peft_lora": lambda p: _do_peft(p, safetensors=True),
        "peft_lora_bin": lambda p: _do_peft(p, safetensors=False),
        "dcp": lambda p: _do_dcp(p, use_get_state_dict=True),
        "dcp_plain": lambda p: _do_dcp(p, use_get_state_dict=False),
        "torch_files": _do_torch_files,
    }
    import importlib.util

    if importlib.util.find_spec("peft") is None:  # peft is optional: skip its writers
        jobs = {name: job for name, job in jobs.items() if not name.startswith("peft")}
    paths: dict[str, str] = {}
    for name, job in jobs.items():
        t0 = time.perf_counter()
        paths[name] = str(job(root / name))
        seconds[name] = round(time.perf_counter() - t0, 3)
    return paths


def _parser() -> argparse.ArgumentParser:
    """Build the child's command-line parser."""
    p = argparse.ArgumentParser(
        prog="python -m ckpttui.demo.hf_writer", description="Write real demo checkpoints."
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("trainer", help="transformers Trainer run with checkpoint-N/ folders")
    t.add_argument("--max-steps", type=int, default=6)
    t.add_argument("--save-steps", type=int, default=2)
    t.add_argument("--model", choices=["gpt2", "bert"], default="gpt2")
    t.add_argument("--save-total-limit", type=int, default=None)
    t.add_argument("--bin", action="store_true", help="pytorch_model.bin instead of safetensors")
    t.add_argument("--no-eval", action="store_true")
    t.add_argument("--max-shard-size", default=None, help="e.g. 40KB or a byte count")
    m = sub.add_parser("model-folder", help="save_pretrained model folder")
    m.add_argument("--sharded", action="store_true")
    m.add_argument("--bin", action="store_true")
    pe = sub.add_parser("peft", help="peft LoRA adapter")
    pe.add_argument("--bin", action="store_true")
    d = sub.add_parser("dcp", help="torch.distributed.checkpoint folder")
    d.add_argument("--plain", action="store_true", help="model.state_dict()/optimizer.state_dict()")
    sub.add_parser("torch-files", help="torch.save zip and legacy files")
    sub.add_parser("all", help="every writer under --out")
    for sp in sub.choices.values():
        sp.add_argument("--out", type=Path, required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    """Child entry point: run one writer and print a CKPTTUI_RESULT JSON line."""
    a = _parser().parse_args(argv)
    _setup_child()
    out = a.out.resolve()
    t0 = time.perf_counter()
    result: dict[str, Any] = {}
    if a.cmd == "trainer":
        _do_trainer(
            out,
            max_steps=a.max_steps,
            save_steps=a.save_steps,
            model_kind=a.model,
            save_total_limit=a.save_total_limit,
            use_safetensors=not a.bin,
            do_eval=not a.no_eval,
            max_shard_size=_shard_size(a.max_shard_size),
        )
    elif a.cmd == "model-folder":
        _do_model_folder(out, sharded=a.sharded, safetensors=not a.bin)
    elif a.cmd == "peft":
        _do_peft(out, safetensors=not a.bin)
    elif a.cmd == "dcp":
        _do_dcp(out, use_get_state_dict=not a.plain)
    elif a.cmd == "torch-files":
        _do_torch_files(out)
    elif a.cmd == "all":
        result["seconds_each"] = {}
        result["paths"] = _do_all(out, result["seconds_each"])
    result.update(out=str(out), seconds=round(time.perf_counter() - t0, 3), files=_files(out))
    print(_RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
