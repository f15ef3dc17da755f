"""Benchmark: scanning a lab's shared disk of many small checkpoints (issue 11).

Generates once (in a cache folder) FILES distinct checkpoints, real ``torch.save`` output (and
safetensors for HF folders), in runs of 100 and several layouts, laid out as the frameworks write
them (see src/ckpttui/demo/toolkit_writers.py for the full-size originals):

- plain torch: ``epoch_N.pt`` holding ``{"model", "optimizer", "epoch", "val_loss"}``
- WeNet-style: ``epoch_N.pt`` (a bare state dict) + ``epoch_N.yaml`` (cv_loss, epoch, step)
- FunASR-style: ``model.pt.epN`` holding ``state_dict``, ``optimizer``, ``scheduler``, ``epoch``...
- Lightning-style: ``epoch=N-step=M.ckpt`` holding ``state_dict``, ``optimizer_states``...
- HF Trainer: ``checkpoint-N/`` with model.safetensors, optimizer.pt, scheduler.pt,
  rng_state.pth, trainer_state.json, config.json

The tree is ``group_G/run_R/...`` in 10 groups; ``group_0`` (a tenth) is where the previous
scanner (``--reference-src``, the main checkout's src) is measured beside ours.

Measures, each command in a fresh process, ``uptime`` noted: the first scan (``inspect --json``)
with 1 and 2 workers and no cache, its peak RSS (the scanning process; workers separately), the
first scan that fills a fresh cache and the second (cached) one, the per-file floor (zip open +
pickle opcode walk of data.pkl) and ``read_file`` on a sample, and the app's time to a complete
folder view (headless ``App.run_test()``), cold and cached.

    python benchmarks/bench_scan.py [--files 2000] [--dir DIR] [--reference-src PATH]
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
RUN = 100
"""Checkpoints per run folder."""
KINDS = ("torch", "wenet", "funasr", "lightning", "torch", "wenet", "funasr", "lightning", "hf")


# --- generation ---------------------------------------------------------------------------------


def _model(seed: int, layers: int = 6) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i in range(layers):
        for name, shape in (
            ("self_attn.linear_q.weight", (8, 8)),
            ("self_attn.linear_q.bias", (8,)),
            ("self_attn.linear_k.weight", (8, 8)),
            ("self_attn.linear_v.weight", (8, 8)),
            ("self_attn.linear_out.weight", (8, 8)),
            ("feed_forward.w_1.weight", (16, 8)),
            ("feed_forward.w_2.weight", (8, 16)),
            ("norm1.weight", (8,)),
            ("norm2.weight", (8,)),
        ):
            sd[f"encoder.encoders.{i}.{name}"] = torch.randn(shape, generator=g)
    sd["decoder.output_layer.weight"] = torch.randn(16, 8, generator=g)
    return sd


def _adam(sd: dict, step: int) -> dict:
    import torch

    state = {
        i: {
            "step": torch.tensor(float(step)),
            "exp_avg": torch.zeros_like(t),
            "exp_avg_sq": torch.zeros_like(t),
        }
        for i, t in enumerate(sd.values())
    }
    return {
        "state": state,
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.98), "params": list(range(len(sd)))}],
    }


def _write_run(run: Path, kind: str, seed: int, count: int) -> None:
    import torch

    run.mkdir(parents=True, exist_ok=True)
    base = _model(seed)
    for n in range(1, count + 1):
        step = n * 250
        loss = 5.0 / n + seed % 7 * 0.01
        sd = dict(base)
        sd["decoder.output_layer.bias"] = torch.full((16,), float(n))  # every file distinct
        if kind == "torch":
            obj = {"model": sd, "optimizer": _adam(sd, step), "epoch": n, "val_loss": loss}
            torch.save(obj, run / f"epoch_{n}.pt")
        elif kind == "wenet":
            torch.save(sd, run / f"epoch_{n}.pt")
            (run / f"epoch_{n}.yaml").write_text(
                f"cv_loss: {loss}\nepoch: {n}\nstep: {step}\nlr: 0.001\n"
                "tag: epoch_{n}\nsave_time: 26/12/2026 10:00:00\n"
            )
        elif kind == "funasr":
            obj = {
                "epoch": n,
                "state_dict": sd,
                "optimizer": _adam(sd, step),
                "scheduler": {"last_epoch": step, "_step_count": step + 1},
                "saved_ckpts": {f"model.pt.ep{n}": loss},
                "val_acc_step_or_eoch": {f"ep{n}": 1 - loss / 10},
                "val_loss_step_or_eoch": {f"ep{n}": loss},
                "best_step_or_epoch": f"ep{n}",
                "step": step,
            }
            torch.save(obj, run / f"model.pt.ep{n}")
        elif kind == "lightning":
            obj = {
                "epoch": n - 1,
                "global_step": step,
                "pytorch-lightning_version": "2.6.6",
                "state_dict": {f"model.{k}": v for k, v in sd.items()},
                "optimizer_states": [_adam(sd, step)],
                "lr_schedulers": [{"last_epoch": n}],
                "callbacks": {
                    "ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min'}": {
                        "monitor": "val_loss",
                        "best_model_score": torch.tensor(loss),
                        "current_score": torch.tensor(loss),
                    }
                },
                "loops": {},
                "hparams_name": "kwargs",
                "hyper_parameters": {"lr": 1e-3},
            }
            torch.save(obj, run / f"epoch={n - 1}-step={step}.ckpt")
        else:
            from safetensors.torch import save_file

            folder = run / f"checkpoint-{step}"
            folder.mkdir(exist_ok=True)
            save_file({k: v.contiguous() for k, v in sd.items()}, folder / "model.safetensors")
            torch.save(_adam(sd, step), folder / "optimizer.pt")
            torch.save({"last_epoch": step}, folder / "scheduler.pt")
            torch.save(
                {"python": [1, 2], "cpu": torch.zeros(8, dtype=torch.uint8)},
                folder / "rng_state.pth",
            )
            (folder / "config.json").write_text(
                json.dumps({"model_type": "bert", "hidden_size": 8})
            )
            history = [{"step": s * 250, "eval_loss": 5.0 / s} for s in range(1, n + 1)][-5:]
            (folder / "trainer_state.json").write_text(
                json.dumps({"global_step": step, "epoch": float(n), "log_history": history})
            )


def _write_runs(args: tuple[str, list[tuple[str, str, int, int]]]) -> None:
    _, jobs = args
    for path, kind, seed, count in jobs:
        _write_run(Path(path), kind, seed, count)


def generate(root: Path, files: int) -> float:
    """Write the tree once (a stamp file says it is complete); seconds spent (0 if it existed)."""
    stamp = root / f".complete-{files}"
    if stamp.exists():
        return 0.0
    import multiprocessing
    import shutil

    if root.exists():
        shutil.rmtree(root)
    t = time.perf_counter()
    runs = []
    for r in range((files + RUN - 1) // RUN):
        count = min(RUN, files - r * RUN)
        kind = KINDS[r % len(KINDS)]
        runs.append((str(root / f"group_{r % 10}" / f"run_{r:04d}_{kind}"), kind, r, count))
    workers = max(1, min(2, os.cpu_count() or 1))
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.map(_write_runs, [("", runs[i::workers]) for i in range(workers)])
    stamp.write_text("")
    return time.perf_counter() - t


# --- measuring ----------------------------------------------------------------------------------

MEASURE = r"""
import io, json, resource, sys, time
sys.path.insert(0, sys.argv[1])
t0 = time.perf_counter()
from ckpttui.cli import main
out = io.StringIO() if False else open("/dev/null", "w")
sys.stdout = out
rc = main(["inspect", *sys.argv[2:]])
sys.stdout = sys.__stdout__
wall = time.perf_counter() - t0
me = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"rc": rc, "s": wall, "rss_mb": me.ru_maxrss / 1024,
    "main_cpu_s": me.ru_utime + me.ru_stime}))
"""

FLOOR = r"""
import json, pickletools, sys, time, zipfile
sys.path.insert(0, sys.argv[1])
paths = [l for l in open(sys.argv[2]).read().splitlines() if l]
t = time.process_time()
for p in paths:
    with zipfile.ZipFile(p) as z:
        name = next(n for n in z.namelist() if n.endswith("data.pkl"))
        for _ in pickletools.genops(z.read(name)):
            pass
floor = (time.process_time() - t) / len(paths)
from ckpttui.formats import read_file
t = time.process_time()
for p in paths:
    read_file(p)
read = (time.process_time() - t) / len(paths)
from ckpttui.inventory import scan
t = time.process_time()
for p in paths:
    scan(p)
whole = (time.process_time() - t) / len(paths)
print(json.dumps({"floor_cpu_ms": 1000 * floor, "read_file_cpu_ms": 1000 * read,
                  "unit_cpu_ms": 1000 * whole}))
"""

APP = r"""
import asyncio, json, sys, time
sys.path.insert(0, sys.argv[1])
t0 = time.perf_counter()
from ckpttui.ui.app import make_app
from ckpttui.ui.widgets.folder_view import FolderView

async def main():
    app = make_app(sys.argv[2])
    async with app.run_test(size=(120, 40)) as pilot:
        first = time.perf_counter() - t0
        folder = app.query_one(FolderView)
        view = None  # every row with its sizes (the last scan's, shown while it is checked)
        while folder.inventory is None and folder.scan_error is None:
            if view is None and folder.stats and all(s.scanned for s in folder.stats.values()):
                view = time.perf_counter() - t0
            await asyncio.sleep(0.02)
        done = time.perf_counter() - t0
        n = len(folder.inventory.checkpoints) if folder.inventory else -1
    import resource
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"first_screen_s": first, "view_s": view or done, "complete_s": done,
                      "checkpoints": n, "rss_mb": rss}))

asyncio.run(main())
"""


def _run(code: str, argv: list[str], env: dict[str, str]) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    """Generate (once), measure, print a JSON summary and a markdown table."""
    p = argparse.ArgumentParser()
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--dir", help="where the tree is generated (default: a cache folder)")
    p.add_argument(
        "--reference-src", help="src folder of the previous ckpttui (e.g. /work/main/src)"
    )
    p.add_argument("--sample", type=int, default=300, help="files in the per-file floor sample")
    p.add_argument("--no-app", action="store_true")
    p.add_argument(
        "--cached-only",
        action="store_true",
        help="only the second visit: fill a cache (ours, and the reference's with --reference-src)"
        " with one scan, then time the cached inspect --json and the cached app, side by side",
    )
    args = p.parse_args()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    root = Path(args.dir or Path(cache) / "ckpttui-bench" / f"scan-{args.files}")
    gen = generate(root, args.files)
    print(f"tree {root}: generated in {gen:.1f} s" if gen else f"tree {root}: reused", flush=True)
    print("uptime:", os.popen("uptime").read().strip(), flush=True)
    env = dict(os.environ, PYTHONPATH=str(SRC))
    scache = tempfile.mkdtemp(prefix="bench-scan-cache-")
    env["CKPTTUI_SCAN_CACHE"] = scache
    results: dict = {"files": args.files, "generation_s": round(gen, 1)}
    if args.cached_only:
        return _cached_only(root, env, args.reference_src)

    def inspect(label: str, *extra: str, where: Path = root, src: Path = SRC) -> dict:
        r = _run(MEASURE, [str(src), str(where), "--json", *extra], env)
        results[label] = r
        print(
            f"{label:34s} {r['s']:8.2f} s  peak rss {r['rss_mb']:7.1f} MB  "
            f"scanning process cpu {r['main_cpu_s']:.1f} s",
            flush=True,
        )
        return r

    sample = sorted(
        str(p) for p in root.rglob("*") if p.suffix in (".pt", ".ckpt") or ".pt.ep" in p.name
    )
    sample = sample[:: max(1, len(sample) // args.sample)][: args.sample]
    sample = [s for s in sample if "checkpoint-" not in s]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(sample))
    results["per_file"] = _run(FLOOR, [str(SRC), f.name], env)
    print("per file, ours:", results["per_file"], flush=True)
    if args.reference_src:
        results["per_file_reference"] = _run(FLOOR, [args.reference_src, f.name], env)
        print("per file, reference:", results["per_file_reference"], flush=True)

    group = root / "group_0"
    if args.reference_src:
        ref = Path(args.reference_src)
        r = _run(MEASURE, [str(ref), str(group), "--json"], env)
        results["reference_group0"] = r
        print(f"{'reference group_0':28s} {r['s']:8.2f} s  rss {r['rss_mb']:7.1f} MB", flush=True)
        inspect("ours group_0 -j1 no cache", "-j", "1", "--no-cache", where=group)
        inspect("ours group_0 -j2 no cache", "-j", "2", "--no-cache", where=group)
    # Above 10,000 files (a busy 2-core machine), what needs two cold scans of the whole tree
    # runs on group_0 (a tenth): 1 vs 2 workers, and the app cold.
    big = args.files > 10_000
    part = group if big else root
    tag = "group_0" if big else "all"
    inspect(f"first scan -j1 no cache ({tag})", "-j", "1", "--no-cache", where=part)
    inspect(f"first scan -j2 no cache ({tag})", "-j", "2", "--no-cache", where=part)
    inspect("first scan -j2 fills cache (all)", "-j", "2")
    inspect("second scan, cached (all)", "-j", "2")
    if not args.no_app:
        runs = [("app cold", part, tempfile.mkdtemp(prefix="bench-scan-app-"))]
        runs.append(("app cached", root, scache))
        if not big:
            runs = [(label, root, runs[0][2]) for label in ("app cold", "app cached")]
        for label, where, cache_dir in runs:
            label = f"{label} ({'group_0' if where == group else 'all'})"
            r = _run(APP, [str(SRC), str(where)], dict(env, CKPTTUI_SCAN_CACHE=cache_dir))
            results[label] = r
            print(
                f"{label:28s} complete {r['complete_s']:.2f} s (first screen "
                f"{r['first_screen_s']:.2f} s, {r['checkpoints']} checkpoints, "
                f"rss {r['rss_mb']:.1f} MB)",
                flush=True,
            )
    print("uptime:", os.popen("uptime").read().strip(), flush=True)
    print(json.dumps(results))
    return 0


def _cached_only(root: Path, env: dict[str, str], reference: str | None) -> int:
    """Second visits only: each side fills its own cache once, then cached CLI and app, twice."""
    sides = [("ours", SRC)] + ([("reference", Path(reference))] if reference else [])
    caches = {label: tempfile.mkdtemp(prefix=f"bench-scan-{label}-") for label, _ in sides}
    results: dict = {}
    for label, src in sides:
        r = _run(
            MEASURE,
            [str(src), str(root), "--json", "-j", "2"],
            dict(env, PYTHONPATH=str(src), CKPTTUI_SCAN_CACHE=caches[label]),
        )
        print(f"{label:10s} fills its cache: {r['s']:.1f} s", flush=True)
    print("uptime:", os.popen("uptime").read().strip(), flush=True)
    for rep in range(2):
        for label, src in sides:
            side_env = dict(env, PYTHONPATH=str(src), CKPTTUI_SCAN_CACHE=caches[label])
            cli = _run(MEASURE, [str(src), str(root), "--json", "-j", "2"], side_env)
            app = _run(APP, [str(src), str(root)], side_env)
            results[f"{label} {rep}"] = {"cli": cli, "app": app}
            print(
                f"{label:10s} cached inspect --json {cli['s']:6.2f} s (rss {cli['rss_mb']:.0f} MB)"
                f" | app complete {app['complete_s']:6.2f} s (first screen "
                f"{app['first_screen_s']:.2f} s, {app['checkpoints']} checkpoints, "
                f"rss {app['rss_mb']:.0f} MB)",
                flush=True,
            )
    print("uptime:", os.popen("uptime").read().strip(), flush=True)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
