"""Benchmark: `ckpttui merge DCP_DIR` against torch's dcp_to_torch_save and accelerate merge-weights.

Generates once, under ``--dir`` (default /tmp/ckpttui-bench-dcp), a real 4-rank DCP folder
(``torch.distributed.checkpoint.save`` from 4 gloo ranks, spawn) of ``{"model": state_dict}``
whose tensors are DTensors sharded by rows (``Shard(0)``, FSDP2's layout, as accelerate's FSDP
``pytorch_model_fsdp_0`` folders hold): a Llama-like set of fp32 shapes (hidden 2048,
intermediate 5504, ``--layers`` layers, vocab 32000), ~2 GB at 8 layers. Then runs each method in
its own process, round robin ``--repeat`` times (``sync`` before each run), and prints the median
wall time (imports included) and peak RSS (``VmHWM``) with ratios to torch:

* torch ``dcp_to_torch_save(DIR, OUT.pt)`` (the whole state dict in memory, then torch.save);
* accelerate ``merge_fsdp_weights(DIR, OUT_DIR)`` (``accelerate merge-weights``: the same load,
  then safetensors);
* ckpttui ``merge_dcp(DIR, OUT)`` to ``.pt`` and to ``.safetensors``.

Finally it checks every output against torch's: same keys, dtypes and values.

    python benchmarks/bench_dcp.py [--repeat 3] [--dir DIR] [--layers 8] [--ranks 4]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _child import HWM, remove, run_child

METHODS = {
    "torch dcp_to_torch_save -> .pt": (
        "ref.pt",
        "import json\nfrom torch.distributed.checkpoint.format_utils import dcp_to_torch_save\n"
        "dcp_to_torch_save(DCP, OUT)\n",
    ),
    "accelerate merge-weights -> .safetensors": (
        "acc",
        "import json\nfrom accelerate.utils import merge_fsdp_weights\n"
        "merge_fsdp_weights(DCP, OUT, safe_serialization=True)\n",
    ),
    "ckpttui merge -> .pt": (
        "ours.pt",
        "import json\nfrom ckpttui.jobs.dcp_merge import merge_dcp\n"
        "for _ in merge_dcp(DCP, OUT):\n    pass\n",
    ),
    "ckpttui merge -> .safetensors": (
        "ours.safetensors",
        "import json\nfrom ckpttui.jobs.dcp_merge import merge_dcp\n"
        "for _ in merge_dcp(DCP, OUT):\n    pass\n",
    ),
}
REFERENCE = {
    "ckpttui merge -> .pt": "torch dcp_to_torch_save -> .pt",
    "ckpttui merge -> .safetensors": "accelerate merge-weights -> .safetensors",
}

GEN = r"""
import os, sys, socket
import torch, torch.distributed as dist, torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp

def shapes(layers):
    h, i, v = 2048, 5504, 32000
    out = {"model.embed_tokens.weight": (v, h)}
    for n in range(layers):
        p = f"model.layers.{n}."
        for m in ("q", "k", "v", "o"):
            out[p + f"self_attn.{m}_proj.weight"] = (h, h)
        out[p + "mlp.gate_proj.weight"] = (i, h)
        out[p + "mlp.up_proj.weight"] = (i, h)
        out[p + "mlp.down_proj.weight"] = (h, i)
        out[p + "input_layernorm.weight"] = (h,)
        out[p + "post_attention_layernorm.weight"] = (h,)
    out["model.norm.weight"] = (h,)
    out["lm_head.weight"] = (v, h)
    return out

def rank(r, world, out, port, layers):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=r, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    g = torch.Generator().manual_seed(r)
    sd = {}
    for name, shape in shapes(layers).items():
        rows = -(-shape[0] // world)
        lo, hi = min(r * rows, shape[0]), min((r + 1) * rows, shape[0])
        local = torch.randn((hi - lo, *shape[1:]), generator=g)
        sd[name] = DTensor.from_local(local, mesh, [Shard(0)], shape=torch.Size(shape),
                                      stride=torch.empty(shape, device="meta").stride())
    dcp.save({"model": sd}, checkpoint_id=out)
    dist.barrier()
    dist.destroy_process_group()

if __name__ == "__main__":
    out, layers, world = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    mp.start_processes(rank, args=(world, out, port, layers), nprocs=world, join=True,
                       start_method="spawn")
"""


def run_once(code: str, dcp_dir: Path, out: Path) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of one method in a fresh process."""
    remove(out)
    return run_child(code + HWM, {"DCP": dcp_dir, "OUT": out})


def verify(root: Path) -> list[str]:
    """Every output against dcp_to_torch_save's ``["model"]``: keys, order, dtypes, values."""
    import torch
    from safetensors import safe_open

    ref = torch.load(root / "ref.pt", mmap=True, weights_only=True)["model"]
    lines = []
    for name, path in (
        ("accelerate", root / "acc" / "model.safetensors"),
        ("ckpttui .safetensors", root / "ours.safetensors"),
        ("ckpttui .pt", root / "ours.pt"),
    ):
        if path.suffix == ".pt":
            ours = torch.load(path, mmap=True, weights_only=True)
            ok = list(ours) == list(ref) and all(torch.equal(ours[k], ref[k]) for k in ref)
        else:
            with safe_open(str(path), "pt") as f:
                ok = set(f.keys()) == set(ref) and all(
                    torch.equal(f.get_tensor(k), ref[k]) for k in ref
                )
        lines.append(f"{name}: {'equal' if ok else 'DIFFERS'} ({len(ref)} tensors)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/ckpttui-bench-dcp"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--ranks", type=int, default=4)
    args = parser.parse_args()
    root = args.dir
    dcp_dir = root / "pytorch_model_fsdp_0"
    if not (dcp_dir / ".metadata").is_file():
        root.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        gen = root / "gen.py"
        gen.write_text(GEN)
        cmd = [sys.executable, str(gen), str(dcp_dir), str(args.layers), str(args.ranks)]
        subprocess.run(cmd, check=True)
        print(f"generated in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    size = sum(p.stat().st_size for p in dcp_dir.iterdir())
    results: dict[str, list[tuple[float, int]]] = {m: [] for m in METHODS}
    for _ in range(args.repeat):
        for method, (out, code) in METHODS.items():
            results[method].append(run_once(code, dcp_dir, root / out))
            print(method, results[method][-1], file=sys.stderr, flush=True)
    med = {
        m: (statistics.median(w for w, _ in r), statistics.median(h for _, h in r))
        for m, r in results.items()
    }
    print(f"\nDCP folder {size / 1e9:.2f} GB, {args.ranks} ranks; median of {args.repeat}\n")
    print("| method | wall s | peak RSS MB | vs | time x | RSS x |")
    print("|---|---:|---:|---|---:|---:|")
    for method, (w, h) in med.items():
        ref = REFERENCE.get(method)
        if ref is None:
            print(f"| {method} | {w:.1f} | {h / 2**20:.0f} | | | |")
            continue
        rw, rh = med[ref]
        tw, th = med["torch dcp_to_torch_save -> .pt"]
        print(
            f"| {method} | {w:.1f} | {h / 2**20:.0f} | {ref.split(' ')[0]} | {w / rw:.2f} "
            f"| {h / rh:.2f} |"
        )
        if ref != "torch dcp_to_torch_save -> .pt":
            print(f"| (same row vs torch) | | | torch | {w / tw:.2f} | {h / th:.2f} |")
    print()
    for line in verify(root):
        print("verify:", line)


if __name__ == "__main__":
    main()
