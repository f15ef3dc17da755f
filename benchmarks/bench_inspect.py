"""Benchmark: `ckpttui inspect --json` against `torch.load` on a ~1.2 GB FunASR-style checkpoint.

Generates (once, in a cache folder) a ``model.pt.ep3`` laid out as FunASR's trainer writes it
(``state_dict`` + AdamW ``optimizer`` after a real step + ``scheduler`` + bookkeeping), then runs
each reader in its own process, several times, and prints a table: wall time of the whole
command, time of the read itself (after interpreter start and imports), and peak RSS, each with
its ratio to ckpttui.

    python benchmarks/bench_inspect.py [--size-mb 1200] [--repeat 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def make_checkpoint(path: Path, size_mb: int) -> None:
    """A FunASR-style epoch checkpoint: weights + AdamW state is ~3x the weights."""
    import torch

    torch.manual_seed(0)
    n_params = size_mb * 1024 * 1024 // 12  # fp32 weights + exp_avg + exp_avg_sq
    width = 1024
    layers = max(1, n_params // (width * width + width) // 3)
    model = torch.nn.Module()
    model.encoder = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
    model.decoder = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
    model.predictor = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    state = {
        "epoch": 3,
        "state_dict": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "saved_ckpts": {"model.pt.ep1": 0.8},
        "step": 3000,
        "val_acc_step_or_eoch": {"ep3": 0.91},
    }
    tmp = path.with_name(path.name + ".tmp-bench")
    torch.save(state, tmp)
    os.replace(tmp, path)


READERS = {
    "ckpttui inspect --json": (
        "import time, io, contextlib, json\n"
        "t0 = time.perf_counter()\n"
        "from ckpttui.inventory import scan, report_dict\n"
        "t1 = time.perf_counter()\n"
        "doc = json.dumps(report_dict(scan(PATH)))\n"
        "t2 = time.perf_counter()\n"
    ),
    "torch.load(weights_only=True)": (
        "import time\n"
        "t0 = time.perf_counter()\n"
        "import torch\n"
        "t1 = time.perf_counter()\n"
        "sd = torch.load(PATH, weights_only=True)\n"
        "t2 = time.perf_counter()\n"
    ),
    "torch.load(mmap=True, weights_only=True)": (
        "import time\n"
        "t0 = time.perf_counter()\n"
        "import torch\n"
        "t1 = time.perf_counter()\n"
        "sd = torch.load(PATH, mmap=True, weights_only=True)\n"
        "t2 = time.perf_counter()\n"
    ),
}
# VmHWM (peak RSS of this process image): unlike ru_maxrss it does not inherit the parent's peak
# across fork + exec.
_TAIL = (
    "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
    "print(t2 - t1, hwm)\n"
)


def run_once(code: str, path: Path) -> tuple[float, float, int]:
    """(wall seconds, read seconds, peak RSS bytes) of one child process."""
    env = dict(os.environ, PYTHONPATH=str(SRC))
    script = f"PATH = {str(path)!r}\n" + code + _TAIL
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )
    wall = time.perf_counter() - t0
    read_s, rss_kib = proc.stdout.split()
    return wall, float(read_s), int(rss_kib) * 1024


def main() -> None:
    """Generate the input if needed, run every reader, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=1200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "ckpttui-bench"))
    args = ap.parse_args()
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"model.pt.ep3-{args.size_mb}mb"
    if not path.exists():
        print(f"writing {path} ...", file=sys.stderr)
        make_checkpoint(path, args.size_mb)
    size = path.stat().st_size
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)  # warm page cache
    results = {}
    for name, code in READERS.items():
        runs = [run_once(code, path) for _ in range(args.repeat)]
        results[name] = tuple(statistics.median(r[i] for r in runs) for i in range(3))
    base = results["ckpttui inspect --json"]
    print(f"input: {path.name}, {size / 1e9:.2f} GB, median of {args.repeat} runs, warm cache\n")
    print("| reader | command wall | x ckpttui | read time | x ckpttui | peak RSS | x ckpttui |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (wall, read_s, rss) in results.items():
        print(
            f"| {name} | {wall:.3f} s | {wall / base[0]:.1f}x | {read_s * 1000:.1f} ms | "
            f"{read_s / base[1]:.1f}x | {rss / 2**20:.0f} MiB | {rss / base[2]:.1f}x |"
        )
    print()
    print(
        json.dumps(
            {k: {"wall_s": v[0], "read_s": v[1], "peak_rss": v[2]} for k, v in results.items()}
        )
    )


if __name__ == "__main__":
    main()
