"""Benchmark: `ckpttui` ZeRO merge against DeepSpeed's ``zero_to_fp32.py`` on a ~300M model.

Generates (once, cached under ``--dir``) real DeepSpeed checkpoints of a ~302M-parameter model
(``ckpttui.demo.ds_writer``'s model widened: ``hidden=4096``, 18 x Linear(4096, 4096) blocks)
trained one AdamW step by a real engine on the CPU, 2 ranks (gloo), ZeRO-2 and ZeRO-3, bf16
weights with fp32 master copies. Then, for each stage, runs each converter in its own process,
``--repeat`` times (round robin, page cache warm, ``sync`` before each run), and prints a
markdown table of the median whole-command wall time, the conversion time (after ``torch`` and
the tool's modules are imported), and peak RSS (the child's own ``VmHWM``), each with its ratio
to DeepSpeed writing the same format:

* DeepSpeed: the ``zero_to_fp32.py`` copied into the save dir, run as its CLI
  (``zero_to_fp32.py SAVE_DIR OUT_DIR`` -> ``pytorch_model.bin``, and with
  ``--safe_serialization`` -> ``model.safetensors``; default ``--max_shard_size 5GB``, so one
  file). The child imports torch/deepspeed first (timed) and then runs the script with
  ``runpy.run_path(..., run_name="__main__")`` and the CLI's ``sys.argv``.
* ckpttui: ``merge_zero(SAVE_DIR, OUT)`` to ``.pt`` and to ``.safetensors`` (consumed fully;
  note it also fsyncs and re-reads its output for the sha256 it reports, DeepSpeed does neither).

Finally loads all four outputs of each stage and checks keys (and order for the pickles), dtypes
and ``torch.equal`` values against DeepSpeed's ``pytorch_model.bin``.

    python benchmarks/bench_merge.py [--repeat 5] [--stages 2,3] [--dir DIR]
                                     [--hidden 4096] [--layers 18] [--dtype bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

from ckpttui.demo import ds_writer  # imports neither torch nor deepspeed

MARK = "BENCH_RESULT "
_HWM = (
    "hwm = int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])\n"
    f"print({MARK!r} + json.dumps([t1 - t0, t2 - t1, hwm * 1024]), flush=True)\n"
)

# DeepSpeed's CLI, as a user runs it (`python SAVE_DIR/zero_to_fp32.py SAVE_DIR OUT_DIR ...`).
DS_CODE = (
    "import json, runpy, sys, time\n"
    "t0 = time.perf_counter()\n"
    "import torch, deepspeed.utils.zero_to_fp32, safetensors.torch, huggingface_hub\n"
    "t1 = time.perf_counter()\n"
    "sys.argv = [SCRIPT, SAVE, OUT_DIR] + EXTRA\n"
    "runpy.run_path(SCRIPT, run_name='__main__')\n"
    "t2 = time.perf_counter()\n"
) + _HWM

CK_CODE = (
    "import json, time\n"
    "t0 = time.perf_counter()\n"
    "import torch\n"
    "from ckpttui.jobs.merge import merge_zero\n"
    "t1 = time.perf_counter()\n"
    "for _event in merge_zero(SAVE, OUT):\n"
    "    pass\n"
    "t2 = time.perf_counter()\n"
) + _HWM

# name -> (kind, output name inside the run folder, extra CLI args for DeepSpeed)
METHODS = {
    "DeepSpeed zero_to_fp32.py -> .bin": ("ds", "pytorch_model.bin", []),
    "DeepSpeed zero_to_fp32.py --safe_serialization": (
        "ds",
        "model.safetensors",
        ["--safe_serialization"],
    ),
    "ckpttui merge_zero -> .pt": ("ck", "merged.pt", None),
    "ckpttui merge_zero -> .safetensors": ("ck", "merged.safetensors", None),
}
REFERENCE = {  # ratio of each row to DeepSpeed writing the same format
    "ckpttui merge_zero -> .pt": "DeepSpeed zero_to_fp32.py -> .bin",
    "ckpttui merge_zero -> .safetensors": "DeepSpeed zero_to_fp32.py --safe_serialization",
}


def n_params(hidden: int, layers: int) -> int:
    """Parameter count of ds_writer's model with the given size knobs (no tying)."""
    v, d = ds_writer.VOCAB, ds_writer.DIM
    return (
        v * d
        + (d * hidden + hidden)
        + layers * (hidden * hidden + hidden)
        + (hidden * d + d)
        + (d * v + v)
    )


def generate(root: Path, stages: list[int], dtype: str, hidden: int, layers: int) -> dict:
    """Write (or reuse) one DeepSpeed save dir per stage under ``root``; return their info."""
    done = root / "complete.json"
    if done.exists():
        return json.loads(done.read_text())
    if root.exists():
        shutil.rmtree(root)
    configs = [
        ds_writer.DSConfig(f"z{s}_{dtype}", s, dtype, hidden=hidden, layers=layers) for s in stages
    ]
    print(
        f"training + saving {n_params(hidden, layers) / 1e6:.1f}M params, stages {stages}, "
        f"{dtype}, 2 ranks, into {root} ...",
        file=sys.stderr,
        flush=True,
    )
    t0 = time.perf_counter()
    dirs = ds_writer.write_deepspeed_checkpoints(root, configs, world_size=2, steps=1)
    took = time.perf_counter() - t0
    info = {
        "seconds": round(took, 1),
        "params": n_params(hidden, layers),
        "save_dirs": {str(c.stage): str(dirs[c.name]) for c in configs},
    }
    done.write_text(json.dumps(info))
    return info


def child_env() -> dict[str, str]:
    """The converters' environment: ours, plus the CPU accelerator and ckpttui importable."""
    env = dict(os.environ, DS_ACCELERATOR="cpu", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join([str(SRC)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def run_once(method: str, save: Path, run_dir: Path) -> tuple[float, float, float, int]:
    """(command wall s, import s, conversion s, peak RSS bytes) of one converter process."""
    kind, out_name, extra = METHODS[method]
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    if kind == "ds":
        script = f"SCRIPT = {str(save / 'zero_to_fp32.py')!r}\nSAVE = {str(save)!r}\n"
        script += f"OUT_DIR = {str(run_dir)!r}\nEXTRA = {extra!r}\n" + DS_CODE
    else:
        script = f"SAVE = {str(save)!r}\nOUT = {str(run_dir / out_name)!r}\n" + CK_CODE
    os.sync()  # the previous run's dirty pages are not this run's work
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        check=False,
    )
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode != 0 or not lines or not (run_dir / out_name).is_file():
        raise RuntimeError(
            f"{method} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    imp, conv, hwm = json.loads(lines[-1][len(MARK) :])
    return wall, imp, conv, hwm


def warm(folder: Path) -> int:
    """Read every file under ``folder`` once (page cache); return the bytes read."""
    total = 0
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                while chunk := f.read(1 << 24):
                    total += len(chunk)
    return total


def verify(outputs: dict[str, Path]) -> str:
    """Compare every output with DeepSpeed's .bin: keys (order for pickles), dtype, values."""
    import torch
    from safetensors import safe_open

    ref_name = "DeepSpeed zero_to_fp32.py -> .bin"
    ref = torch.load(outputs[ref_name], mmap=True, weights_only=True)
    notes = []
    for name, path in outputs.items():
        if name == ref_name:
            continue
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                keys = list(f.keys())
                if set(keys) != set(ref):
                    notes.append(f"{name}: KEYS DIFFER {sorted(set(keys) ^ set(ref))[:5]}")
                    continue
                bad = [
                    k
                    for k in ref
                    if not (
                        f.get_tensor(k).dtype == ref[k].dtype
                        and torch.equal(f.get_tensor(k), ref[k])
                    )
                ]
            order = "same key set"
        else:
            other = torch.load(path, mmap=True, weights_only=True)
            if set(other) != set(ref):
                notes.append(f"{name}: KEYS DIFFER {sorted(set(other) ^ set(ref))[:5]}")
                continue
            bad = [
                k
                for k in ref
                if not (other[k].dtype == ref[k].dtype and torch.equal(other[k], ref[k]))
            ]
            order = (
                "same keys, same order" if list(other) == list(ref) else "same keys, order differs"
            )
        status = "EQUAL" if not bad else f"{len(bad)} TENSORS DIFFER (e.g. {bad[:3]})"
        notes.append(f"{name}: {status} to the .bin ({len(ref)} tensors, {order})")
    return "\n".join(notes)


def main() -> None:
    """Generate the input if needed, run each converter per stage, print table + verification."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--stages", default="2,3")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=18)
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "ckpttui-bench"))
    args = ap.parse_args()
    stages = [int(s) for s in args.stages.split(",")]
    base = Path(args.dir)
    root = (
        base / f"ds-merge-h{args.hidden}-l{args.layers}-{args.dtype}-z{''.join(map(str, stages))}"
    )
    info = generate(root, stages, args.dtype, args.hidden, args.layers)
    print(
        f"model: {info['params'] / 1e6:.1f}M params ({args.dtype} weights, fp32 masters), "
        f"2 ranks, 1 AdamW step; generated in {info['seconds']:.0f} s (cached in {root})"
    )

    rows = []
    checks = []
    for stage in stages:
        save = Path(info["save_dirs"][str(stage)])
        tag_dir = save / (save / "latest").read_text().strip()
        size = warm(tag_dir)
        files = sorted(p.name for p in tag_dir.iterdir())
        print(f"ZeRO-{stage}: {tag_dir} {size / 1e9:.2f} GB in {len(files)} files", flush=True)
        runs: dict[str, list[tuple[float, float, float, int]]] = {m: [] for m in METHODS}
        work = base / "merge-runs" / f"z{stage}"
        slug = {m: f"{i}-{METHODS[m][1]}" for i, m in enumerate(METHODS)}
        for _ in range(args.repeat):
            for method in METHODS:  # each run replaces only its own folder: the last ones stay
                runs[method].append(run_once(method, save, work / slug[method]))
                print(f"  {method}: {runs[method][-1]}", file=sys.stderr, flush=True)
        outputs = {m: work / slug[m] / METHODS[m][1] for m in METHODS}
        checks.append(f"ZeRO-{stage}:\n" + verify(outputs))
        for method in METHODS:
            med = tuple(statistics.median(r[i] for r in runs[method]) for i in range(4))
            convs = [r[2] for r in runs[method]]
            rows.append((stage, method, med, (min(convs), max(convs))))
        shutil.rmtree(work)

    print(f"\nmedian of {args.repeat} runs, warm page cache, each run in its own process\n")
    print(
        "| ZeRO | converter | command wall | x DS | conversion (min-max) | x DS | peak RSS | x DS |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    by = {(s, m): med for s, m, med, _ in rows}
    for stage, method, (wall, _imp, conv, rss), (lo, hi) in rows:
        ref = by[(stage, REFERENCE.get(method, method))]
        print(
            f"| {stage} | {method} | {wall:.2f} s | {wall / ref[0]:.2f}x | {conv:.2f} s "
            f"({lo:.1f}-{hi:.1f}) | {conv / ref[2]:.2f}x | {rss / 2**20:.0f} MiB | "
            f"{rss / ref[3]:.2f}x |"
        )
    print()
    print("\n".join(checks))
    print()
    print(
        json.dumps(
            {
                f"z{s} {m}": {
                    "wall_s": med[0],
                    "import_s": med[1],
                    "convert_s": med[2],
                    "peak_rss": med[3],
                }
                for s, m, med, _ in rows
            }
        )
    )


if __name__ == "__main__":
    main()
