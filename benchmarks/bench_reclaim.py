"""Benchmark: ``ckpttui reclaim`` of 5 FunASR epochs (~1.25 GB each) keeping the newest one.

Inputs: the five FunASR-style epochs of `bench_jobs.prepare` (fp32 weights + AdamW state +
scheduler + bookkeeping), copied (not linked: a hard link would free nothing) into a fresh run
folder before each run, untimed. Measured in child processes, side by side, page cache warm
(`bench_jobs.warm`):

* ckpttui: ``ckpttui.jobs.reclaim.reclaim([RUN], keep_last=1, keep_best=0)``: four files slimmed
  in place (written beside, fsynced, read back, swapped, old bytes removed); bytes freed as
  ``statvfs`` sees them, job seconds (after imports), peak RSS (``VmHWM``);
* reference: ``cat`` of the four input files (the bytes reclaim reads), then ``dd conv=fsync`` of
  as many bytes as reclaim writes into the run folder: the disk cost with no parsing.

The target: peak RSS at most 0.5x one model's weights. A child that only imports torch and the
job's modules gives the baseline (the interpreter and torch, before any checkpoint is touched).

    python benchmarks/bench_reclaim.py [--size-mb 1250] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_jobs import MARK, measure, measure_cmd, mib, prepare, warm, weight_bytes

_HWM = (
    "hwm = int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])\n"
    f"print({MARK!r} + json.dumps([t1 - t0, t2 - t1, hwm * 1024, INFO]), flush=True)\n"
)

RECLAIM_CODE = (
    "import json, os, time\n"
    "t0 = time.perf_counter()\n"
    "from ckpttui.jobs.reclaim import reclaim\n"
    "t1 = time.perf_counter()\n"
    "st = os.statvfs(RUN); free0 = st.f_bavail * st.f_frsize\n"
    "last = None\n"
    "for event in reclaim([RUN], keep_last=1, keep_best=0):\n"
    "    last = event\n"
    "assert last is not None and last.kind == 'done', last\n"
    "st = os.statvfs(RUN); INFO = st.f_bavail * st.f_frsize - free0\n"
    "t2 = time.perf_counter()\n"
) + _HWM

BASELINE_CODE = (
    "import json, time\n"
    "t0 = time.perf_counter()\n"
    "import torch\n"
    "from ckpttui.jobs import export, reclaim, weights\n"
    "t1 = time.perf_counter()\n"
    "INFO = 0\n"
    "t2 = time.perf_counter()\n"
) + _HWM


def fresh_run(epochs: list[Path], run: Path) -> None:
    """A run folder of real copies of the epochs (old mtimes, as a settled run's)."""
    if run.exists():
        shutil.rmtree(run)
    run.mkdir()
    for p in epochs:
        shutil.copy2(p, run / p.name)
    subprocess.run(["sync"], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=1250)
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "ckpttui-bench"))
    args = ap.parse_args()
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    epochs = prepare(folder, args.size_mb)
    run = folder / f"reclaim-{args.size_mb}mb"
    fresh_run(epochs, run)
    slimmed = [run / p.name for p in epochs[:-1]]
    before = sum(p.stat().st_size for p in slimmed)
    weights = weight_bytes(epochs[-1])
    print(f"load: {os.getloadavg()}", file=sys.stderr)

    base = measure(BASELINE_CODE, {})
    warm(slimmed)
    ours = measure(RECLAIM_CODE, {"RUN": str(run)})
    after = sum(p.stat().st_size for p in slimmed)

    fresh_run(epochs, run)
    warm(slimmed)
    cat = measure_cmd(["cat", *map(str, slimmed)])
    dd_out = run / "dd.out"
    dd = measure_cmd(
        [
            "dd",
            f"if={slimmed[0]}",
            f"of={dd_out}",
            "bs=4M",
            f"count={after}",
            "iflag=count_bytes",
            "conv=fsync",
        ]
    )
    shutil.rmtree(run)
    ref = cat["job"] + dd["job"]
    print(f"load after: {os.getloadavg()}", file=sys.stderr)
    print(f"| {args.size_mb} MB x 5, keep 1 | seconds (job) | peak RSS | freed |")
    print("|---|---|---|---|")
    print(
        f"| ckpttui reclaim | {ours['job']:.2f} (+{ours['imports']:.2f} imports) | "
        f"{mib(ours['rss'])} | {mib(ours['info'])} (files {mib(before - after)}) |"
    )
    print(
        f"| cat of the 4 inputs + dd conv=fsync of {mib(after)} | {ref:.2f} "
        f"({cat['job']:.2f} + {dd['job']:.2f}) | - | - |"
    )
    print(f"| baseline: a child that only imports torch and the job | - | {mib(base['rss'])} | - |")
    print(
        f"ratio time {ours['job'] / ref:.2f}x the reference; peak RSS "
        f"{ours['rss'] / weights:.2f}x one model's weights ({mib(weights)}), "
        f"{(ours['rss'] - base['rss']) / weights:.2f}x above the baseline"
    )


if __name__ == "__main__":
    main()
