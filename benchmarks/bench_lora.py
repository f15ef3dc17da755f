"""Benchmark: `ckpttui merge ADAPTER --base BASE` against PEFT merge_and_unload + save_pretrained.

Generates once, under ``--dir`` (default /tmp/ckpttui-bench-lora): a ~1B-parameter Llama built
from a config (hidden 2048, intermediate 5504, 18 layers, vocab 32000, tied embeddings; random
weights, bf16; ``save_pretrained``, no hub) and a PEFT LoRA adapter on every linear layer (r=16,
alpha=32, ``init_lora_weights=False`` so A and B are both non-zero, as after training). Then runs
each method in its own process, round robin ``--repeat`` times (``sync`` before each run, page
cache warm), and prints a markdown table: median wall time of the whole command (imports
included), and peak RSS (the child's ``VmHWM``), each with its ratio to PEFT:

* PEFT: ``AutoModelForCausalLM.from_pretrained(BASE, dtype=bf16)``,
  ``PeftModel.from_pretrained(model, ADAPTER).merge_and_unload()``, ``save_pretrained(OUT)``.
* ckpttui: ``merge_lora(ADAPTER, OUT, base=BASE)`` (an HF folder: config copied, safetensors).

Finally it checks both outputs hold the same keys, dtypes and values (bit for bit).

    python benchmarks/bench_lora.py [--repeat 3] [--dir DIR] [--layers 18]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _child import HWM, remove, run_child

PEFT_CODE = (
    "import json, torch\n"
    "from transformers import AutoModelForCausalLM\n"
    "from peft import PeftModel\n"
    "m = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.bfloat16)\n"
    "m = PeftModel.from_pretrained(m, ADAPTER).merge_and_unload()\n"
    "m.save_pretrained(OUT)\n"
) + HWM
CK_CODE = (
    "import json\n"
    "from ckpttui.jobs.lora import merge_lora\n"
    "for _ in merge_lora(ADAPTER, OUT, base=BASE):\n"
    "    pass\n"
) + HWM
METHODS = {"PEFT merge_and_unload + save_pretrained": PEFT_CODE, "ckpttui merge --base": CK_CODE}

GEN = r"""
import sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
from peft import LoraConfig, get_peft_model
root, layers = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5504,
                  num_hidden_layers=layers, num_attention_heads=16, num_key_value_heads=16,
                  tie_word_embeddings=True)
torch.set_default_dtype(torch.bfloat16)
model = LlamaForCausalLM(cfg)
print("params", sum(p.numel() for p in model.parameters()), flush=True)
model.save_pretrained(f"{root}/base")
lora = LoraConfig(r=16, lora_alpha=32, init_lora_weights=False,
                  target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                  "down_proj"])
get_peft_model(model, lora).save_pretrained(f"{root}/adapter")
"""


def run_once(code: str, root: Path, out: Path) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of one method in a fresh process."""
    remove(out)
    return run_child(code, {"BASE": root / "base", "ADAPTER": root / "adapter", "OUT": out})


def verify(a: Path, b: Path) -> str:
    """Same keys, dtypes and values in two HF folders' safetensors."""
    from safetensors import safe_open

    def tensors(folder: Path) -> dict[str, tuple[Path, str]]:
        out = {}
        for path in sorted(folder.glob("*.safetensors")):
            with safe_open(str(path), framework="pt") as f:
                out.update({k: (path, k) for k in f.keys()})  # noqa: SIM118
        return out

    ta, tb = tensors(a), tensors(b)
    if set(ta) != set(tb):
        return f"KEYS DIFFER: {sorted(set(ta) ^ set(tb))[:5]}"
    import torch

    bad = []
    for key in ta:
        with safe_open(str(ta[key][0]), "pt") as fa, safe_open(str(tb[key][0]), "pt") as fb:
            x, y = fa.get_tensor(key), fb.get_tensor(key)
            if x.dtype != y.dtype or not torch.equal(x, y):
                bad.append(key)
    return f"{len(ta)} tensors, all equal" if not bad else f"{len(bad)} DIFFER: {bad[:3]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/ckpttui-bench-lora"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--layers", type=int, default=18)
    args = parser.parse_args()
    root = args.dir
    if not (root / "adapter" / "adapter_config.json").is_file():
        root.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", GEN, str(root), str(args.layers)], check=True)
        print(f"generated in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    results: dict[str, list[tuple[float, int]]] = {m: [] for m in METHODS}
    outs = {m: root / f"out{i}" for i, m in enumerate(METHODS)}
    for _ in range(args.repeat):
        for method, code in METHODS.items():
            results[method].append(run_once(code, root, outs[method]))
            print(method, results[method][-1], file=sys.stderr, flush=True)
    size = sum(p.stat().st_size for p in (root / "base").glob("*.safetensors"))
    ref = "PEFT merge_and_unload + save_pretrained"
    rt = statistics.median(w for w, _ in results[ref])
    rm = statistics.median(h for _, h in results[ref])
    print(f"\nbase {size / 1e9:.2f} GB bf16; median of {args.repeat}\n")
    print("| method | wall s | x PEFT | peak RSS MB | x PEFT |")
    print("|---|---:|---:|---:|---:|")
    for method, runs in results.items():
        w = statistics.median(x for x, _ in runs)
        h = statistics.median(x for _, x in runs)
        print(f"| {method} | {w:.1f} | {w / rt:.2f} | {h / 2**20:.0f} | {h / rm:.2f} |")
    print("\nverify:", verify(outs[ref], outs["ckpttui merge --base"]))


if __name__ == "__main__":
    main()
