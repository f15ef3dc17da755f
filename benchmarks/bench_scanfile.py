"""Benchmark: opening a saved scan (``ckpttui scan.json``) and the live poll (issue 11, items 4-5).

Saved scan: a real ``inspect --json`` of a few ``torch.save`` checkpoints (with metrics) is the
template; its entries are repeated into CHECKPOINTS checkpoints in runs of 1,000, written the way
``inspect --json`` writes (one entry a line). Each measure runs in a fresh process, ``uptime``
noted: the reference floor ``json.load`` of the file, ``load_scan`` (what ``ckpttui scan.json``
does before the app opens), and the app's time to a complete folder view (headless
``App.run_test()``), each with its peak RSS.

Live: one poll (`ckpttui.ui.live.stamps`) of a folder of ENTRIES files, against a bare
``os.listdir`` of it (the least any watcher that notices new names must do).

    python benchmarks/bench_scanfile.py [--checkpoints 50000] [--entries 5000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

MEASURE = r"""
import json, sys, time
which, path = sys.argv[1], sys.argv[2]
t = time.perf_counter()
if which == "json.load":
    with open(path) as fh:
        json.load(fh)
elif which == "load_scan":
    from ckpttui.scanfile import load_scan
    load_scan(path)
else:
    import asyncio
    from ckpttui.ui.app import make_app
    from ckpttui.ui.widgets.folder_view import FolderView
    async def main():
        app = make_app(path)
        async with app.run_test(size=(120, 40)):
            view = app.query_one(FolderView)
            while view.inventory is None:
                await asyncio.sleep(0.02)
    asyncio.run(main())
seconds = time.perf_counter() - t
# VmHWM, not ru_maxrss: on Linux a child's ru_maxrss starts at its parent's (torch-sized) RSS.
with open("/proc/self/status") as fh:
    hwm = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
print(json.dumps([seconds, hwm]))
"""


def template(work: Path) -> dict[str, object]:
    """``inspect --json`` of three real checkpoints of one run."""
    import torch

    run = work / "run"
    run.mkdir()
    for epoch in (1, 2, 3):
        model = {f"layer{i}.weight": torch.randn(64, 64) for i in range(8)}
        optim = {"state": {i: {"exp_avg": torch.randn(64, 64)} for i in range(8)}}
        torch.save(
            {"model": model, "optimizer": optim, "epoch": epoch, "val_loss": 1.0 / epoch},
            run / f"epoch_{epoch}.pt",
        )
    out = subprocess.run(
        [sys.executable, "-m", "ckpttui", "inspect", str(run), "--json", "--no-cache"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    doc: dict[str, object] = json.loads(out.stdout)
    return doc


def write_scan(doc: dict[str, object], count: int, path: Path) -> None:
    """`count` checkpoints from the template's last one, in runs of 1,000, one entry a line."""
    ckpt = doc["checkpoints"][-1]  # type: ignore[index]
    file = doc["files"][-1]  # type: ignore[index]
    scan = dict(doc["scan"], root_abs="/data/exp", other_files={})  # type: ignore[arg-type]
    with open(path, "w") as fh:
        fh.write('{\n "root": "/data/exp",\n "scan": ' + json.dumps(scan) + ",")
        for section, entry in (("checkpoints", ckpt), ("files", file)):
            fh.write(f'\n "{section}": [')
            for n in range(count):
                rel = f"run{n // 1000:03d}/epoch_{n % 1000}.pt"
                e = dict(entry, path=rel)
                if section == "checkpoints":
                    e.update(files=[rel], epoch=n % 1000)
                fh.write(("," if n else "") + "\n  " + json.dumps(e))
            fh.write("\n ],")
        fh.write('\n "errors": [\n ]\n}\n')


def measure(which: str, path: Path) -> tuple[float, float]:
    """(seconds, peak RSS MB) of one measure in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, which, str(path)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    seconds, rss = json.loads(out.stdout.strip().splitlines()[-1])
    return seconds, rss / 1024


def poll_cost(entries: int, work: Path) -> tuple[float, float]:
    """(ms per live poll, ms per bare listdir) of a folder of `entries` files."""
    sys.path.insert(0, str(SRC))
    from ckpttui.ui.live import stamps

    folder = work / "many"
    folder.mkdir()
    for i in range(entries):
        (folder / f"model.pt.ep{i}").write_bytes(b"")
    rounds = 20
    t = time.perf_counter()
    for _ in range(rounds):
        stamps(str(folder), set())
    ours = (time.perf_counter() - t) / rounds * 1000
    t = time.perf_counter()
    for _ in range(rounds):
        os.listdir(folder)
    return ours, (time.perf_counter() - t) / rounds * 1000


def main() -> None:
    """Run both benchmarks and print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoints", type=int, default=50_000)
    p.add_argument("--entries", type=int, default=5_000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        scan = work / "scan.json"
        write_scan(template(work), args.checkpoints, scan)
        print(f"uptime: {os.getloadavg()}")
        print(f"scan.json: {args.checkpoints} checkpoints, {scan.stat().st_size / 2**20:.1f} MiB")
        floor = measure("json.load", scan)
        for which in ("json.load", "load_scan", "app"):
            seconds, rss = floor if which == "json.load" else measure(which, scan)
            print(
                f"{which:10s} {seconds:7.2f} s  {seconds / floor[0]:5.1f}x json.load"
                f"  peak RSS {rss:6.0f} MB"
            )
        ours, bare = poll_cost(args.entries, work)
        print(
            f"live poll of {args.entries} entries: {ours:.1f} ms (bare listdir {bare:.1f} ms, "
            f"{ours / bare:.1f}x)"
        )
        print(f"uptime: {os.getloadavg()}")


if __name__ == "__main__":
    main()
