"""Benchmark: app start to first screen, and key latency while a background scan runs.

Builds (once) a folder of RUNS x FILES real torch.save checkpoints (copies of one small file:
thousands of files), then in a fresh process: time from interpreter start to the first screen
(headless), and how long a "down" key takes to move the cursor while the folder scan is still
reading headers in its worker.

    python benchmarks/bench_app.py [--runs 300] [--files 10]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

CHILD = r"""
import asyncio, json, statistics, sys, time
T0 = float(sys.argv[2])
from ckpttui.ui.app import make_app
from ckpttui.ui.widgets.folder_view import FolderView

async def main():
    app = make_app(sys.argv[1])
    async with app.run_test(size=(120, 40)) as pilot:
        first = time.time() - T0
        folder = app.query_one(FolderView)
        lat = []
        table = app.query_one("#folder-table")
        table.focus()
        from textual import events
        # pilot.press waits for the process to go idle, which a busy scan worker never is:
        # post the key ourselves and time until the cursor has moved.
        for _ in range(40):
            pending = sum(not s.scanned for s in folder.stats.values())
            before = table.cursor_row
            if before >= table.row_count - 1:
                table.move_cursor(row=0)
                await asyncio.sleep(0.01)
                before = table.cursor_row
            t = time.perf_counter()
            app.post_message(events.Key("down", None))
            while table.cursor_row == before and time.perf_counter() - t < 5:
                await asyncio.sleep(0.0005)
            lat.append((time.perf_counter() - t, pending))
            await asyncio.sleep(0.02)
        scanning = [l for l, p in lat if p > 0]
        await app.workers.wait_for_complete()
        await pilot.pause()
        print(json.dumps({"first_screen_s": first, "presses_during_scan": len(scanning),
                          "median_ms": 1000 * statistics.median(scanning) if scanning else None,
                          "p95_ms": 1000 * sorted(scanning)[int(0.95 * (len(scanning) - 1))]
                          if scanning else None,
                          "max_ms": 1000 * max(scanning) if scanning else None,
                          "torch_imported": "torch" in sys.modules}))
asyncio.run(main())
"""


LAG = r"""
import asyncio, json, sys, time
from ckpttui.ui.app import make_app

async def main():
    app = make_app(sys.argv[1])
    async with app.run_test(size=(120, 40)) as pilot:
        lags = []
        end = time.perf_counter() + 6
        while time.perf_counter() < end:
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append(time.perf_counter() - t - 0.01)
        lags.sort()
        print(json.dumps({"median_ms": 1000 * lags[len(lags) // 2],
                          "p95_ms": 1000 * lags[int(0.95 * len(lags))], "max_ms": 1000 * lags[-1]}))
asyncio.run(main())
"""


def make_tree(root: Path, runs: int, files: int) -> int:
    """RUNS folders of FILES small torch.save checkpoints each; returns the file count."""
    import torch

    sample = root.parent / "sample.pt"
    model = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(4)])
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 64)).sum().backward()
    opt.step()
    torch.save(
        {"epoch": 1, "state_dict": model.state_dict(), "optimizer": opt.state_dict()}, sample
    )
    for r in range(runs):
        run = root / f"run{r:04d}" / "exp"
        run.mkdir(parents=True)
        for f in range(files):
            shutil.copy(sample, run / f"model.pt.ep{f + 1}")
    return runs * files


def main() -> None:
    """Build the folder if needed, run the child three times, print a table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--files", type=int, default=10)
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "ckpttui-bench-app"))
    args = ap.parse_args()
    root = Path(args.dir) / f"exp-{args.runs}x{args.files}"
    if not root.exists():
        tmp = root.with_name(root.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        make_tree(tmp, args.runs, args.files)
        tmp.rename(root)
    count = sum(len(files) for _, _, files in os.walk(root))
    results = []
    for _ in range(3):
        env = dict(os.environ, PYTHONPATH=str(SRC))
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(root), repr(time.time())],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"folder: {count} checkpoint files in {args.runs} runs\n")
    print(
        "| run | start to first screen | key presses during scan | median latency | p95 | max "
        "| torch imported |"
    )
    print("|---:|---:|---:|---:|---:|---:|---|")
    for i, r in enumerate(results, 1):

        def ms(key: str) -> str:
            return f"{r[key]:.1f} ms" if r[key] is not None else "-"

        print(
            f"| {i} | {r['first_screen_s']:.3f} s | {r['presses_during_scan']} | "
            f"{ms('median_ms')} | {ms('p95_ms')} | {ms('max_ms')} | {r['torch_imported']} |"
        )
    # One flat folder of 10,000 entries: how long the event loop is held up while it loads.
    flat = Path(args.dir) / "flat-10000"
    if not flat.exists():
        tmp = flat.with_name(flat.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for i in range(10000):
            (tmp / f"f{i:05d}.txt").write_bytes(b"")
        tmp.rename(flat)
    env = dict(os.environ, PYTHONPATH=str(SRC))
    out = subprocess.run(
        [sys.executable, "-c", LAG, str(flat)], capture_output=True, text=True, env=env, check=True
    )
    lag = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        "\nflat folder of 10,000 entries, event-loop lag during the first 6 s: "
        f"median {lag['median_ms']:.1f} ms, p95 {lag['p95_ms']:.1f} ms, "
        f"max {lag['max_ms']:.1f} ms"
    )


if __name__ == "__main__":
    main()
