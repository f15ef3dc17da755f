"""Benchmark: `ckpttui verify` against `cat`, and `ckpttui diff` against torch.load of both inputs.

Inputs (generated once, cached under ``--dir``): the FunASR-style ``model.pt.ep3`` of
`bench_inspect.make_checkpoint` (fp32 weights + AdamW state + scheduler, ``--size-mb``), an
``ep4`` with every weight scaled by 1.01 (diff's B), and the weights of ep3 as bf16 and as fp16
safetensors files (verify's 16-bit paths). Every measured program runs in its own child process;
peak RSS is the child's own ``VmHWM``; the page cache is warm in a known state before each run
(`bench_jobs.warm`: our files' pages dropped, then read once with cat). Runs are round robin.

* verify: ``ckpttui.jobs.verify.verify`` (CRC-32 of every zip record, NaN/Inf, zero, per-tensor
  statistics) against ``cat FILE > /dev/null``, on fp32, bf16 and fp16 files; also with numpy's
  statistics instead of the C module's (what an install without a C compiler gets:
  ``tensorstats._moments = None``) and, on fp32, with zlib's CRC-32 instead of ISA-L's (what a
  machine without ``isal`` gets: no combining of CRC parts either, so a record is read by one
  thread).
  The ratio to cat is taken within each round (cat and verify run back to back) and its median
  over the rounds is reported, with its range; the machine's load average is printed, since the
  2 CPUs of the machine these numbers come from are shared. CPU seconds (user + system) of cat
  and of the verify child are reported too: on a saturated machine they decide the ratio.
* diff: ``ckpttui.jobs.diff.diff(ep3, ep4)`` (float64, chunked) against what a user scripts:
  ``torch.load(weights_only=True)`` of both files, then for each weight the same three numbers
  (``torch.equal``, max |B-A| and ||B-A||/||A|| in float64). Results are compared.

    python benchmarks/bench_verify_diff.py [--size-mb 1000] [--repeat 3] [--dir DIR]
                                          [--only verify|diff]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_jobs
from bench_inspect import make_checkpoint  # imports torch only when called
from bench_jobs import MARK, child, measure, median, mib, warm

_HWM = (
    "hwm = int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])\n"
    f"print({MARK!r} + json.dumps([t1 - t0, t2 - t1, hwm * 1024, INFO]), flush=True)\n"
)

VERIFY_CODE = (
    "import json, resource, time\n"
    "def cpu():\n"
    "    r = resource.getrusage(resource.RUSAGE_SELF)\n"
    "    return r.ru_utime + r.ru_stime\n"
    "t0 = time.perf_counter()\n"
    "from ckpttui.jobs import verify as V\n"
    "if ZLIB:\n"
    "    import zlib\n"
    "    V.crc32, V.crc32_combine = zlib.crc32, None\n"
    "if THREADS:\n"
    "    V.THREADS = THREADS\n"
    "if NUMPY:\n"
    "    from ckpttui.jobs import tensorstats\n"
    "    tensorstats._moments = None\n"
    "t1 = time.perf_counter()\n"
    "c1 = cpu()\n"
    "INFO = None\n"
    "for event in V.verify(PATH):\n"
    "    if event.kind == 'done':\n"
    "        INFO = [event.data['bytes_read'], event.data['healthy']]\n"
    "INFO.append(cpu() - c1)\n"
    "t2 = time.perf_counter()\n"
) + _HWM

DIFF_CODE = (
    "import json, time\n"
    "t0 = time.perf_counter()\n"
    "import torch\n"
    "from ckpttui.jobs.diff import diff\n"
    "t1 = time.perf_counter()\n"
    "for event in diff(A, B):\n"
    "    if event.kind == 'done':\n"
    "        INFO = {t['name']: [t['equal'], t['max_abs'], t['rel_change']]\n"
    "                for t in event.data['tensors']}\n"
    "t2 = time.perf_counter()\n"
) + _HWM

TORCH_DIFF_CODE = (
    "import json, time\n"
    "t0 = time.perf_counter()\n"
    "import torch\n"
    "if ONE_THREAD:\n"
    "    torch.set_num_threads(1)\n"
    "t1 = time.perf_counter()\n"
    "a = torch.load(A, map_location='cpu', weights_only=True)['state_dict']\n"
    "b = torch.load(B, map_location='cpu', weights_only=True)['state_dict']\n"
    "INFO = {}\n"
    "for k, x in a.items():\n"
    "    y = b[k]\n"
    "    d = y.double() - x.double()\n"
    "    n = float(x.double().norm())\n"
    "    INFO[k] = [x.dtype == y.dtype and torch.equal(x, y), float(d.abs().max()),\n"
    "               float(d.norm()) / n if n else 0.0]\n"
    "t2 = time.perf_counter()\n"
) + _HWM

DERIVE_CODE = (
    "import os, torch\n"
    "from safetensors.torch import save_file\n"
    "state = torch.load(BASE, map_location='cpu', weights_only=True)\n"
    "save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v\n"
    "           for k, v in state['state_dict'].items()}, BF16 + '.tmp')\n"
    "os.replace(BF16 + '.tmp', BF16)\n"
    "save_file({k: v.to(torch.float16) if v.is_floating_point() else v\n"
    "           for k, v in state['state_dict'].items()}, F16 + '.tmp')\n"
    "os.replace(F16 + '.tmp', F16)\n"
    "state['state_dict'] = {k: v * 1.01 if v.is_floating_point() else v\n"
    "                       for k, v in state['state_dict'].items()}\n"
    "state['epoch'] = 4\n"
    "torch.save(state, B + '.tmp')\n"
    "os.replace(B + '.tmp', B)\n"
)


def inputs(folder: Path, size_mb: int) -> tuple[Path, Path, Path, Path]:
    """ep3, ep4 and the bf16 and fp16 weights, generated once."""
    folder.mkdir(parents=True, exist_ok=True)
    a, b, bf16, f16 = (
        folder / "model.pt.ep3",
        folder / "model.pt.ep4",
        folder / "weights.bf16.safetensors",
        folder / "weights.f16.safetensors",
    )
    if not a.exists():
        print(f"generating {a} ({size_mb} MB)...", file=sys.stderr)
        make_checkpoint(a, size_mb)
    if not b.exists() or not bf16.exists() or not f16.exists():
        print(f"deriving {b.name}, {bf16.name} and {f16.name}...", file=sys.stderr)
        child(DERIVE_CODE, {"BASE": str(a), "B": str(b), "BF16": str(bf16), "F16": str(f16)})
    return a, b, bf16, f16


def children_cpu() -> float:
    """CPU seconds (user + system) of the children waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bench_verify(a: Path, bf16: Path, f16: Path, repeat: int, against: Path | None = None) -> None:
    """verify against cat, round robin; ratios within each round, their median.

    `against`: another checkout's ``src`` (main's, say) whose verify runs in the same rounds.
    """

    def cat(path: Path) -> dict[str, float]:
        subprocess.run(["sync"], check=True)
        before = children_cpu()
        t0 = time.perf_counter()
        subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)
        wall = time.perf_counter() - t0
        cpu = children_cpu() - before
        return {"wall": wall, "imports": 0.0, "job": wall, "rss": 0, "info": 0, "cpu": cpu}

    def ours(
        path: Path, threads: int = 0, zlib: int = 0, numpy: int = 0, src: Path | None = None
    ) -> dict[str, float]:
        saved = bench_jobs.SRC
        bench_jobs.SRC = src or saved
        try:
            result = measure(
                VERIFY_CODE,
                {"PATH": str(path), "ZLIB": zlib, "THREADS": threads, "NUMPY": numpy},
            )
        finally:
            bench_jobs.SRC = saved
        _, healthy, cpu = result["info"]  # type: ignore[misc]
        if healthy is not True:
            print(f"  ! verify {path.name}: not healthy", file=sys.stderr)
        result["cpu"] = cpu
        return result

    plan: list[tuple[str, Path, Any]] = []
    for path in (a, bf16, f16):
        plan += [
            ("cat", path, lambda path=path: cat(path)),
            ("ckpttui verify", path, lambda path=path: ours(path)),
            ("ckpttui verify, numpy statistics", path, lambda path=path: ours(path, numpy=1)),
        ]
        if path == a:
            plan.append(("ckpttui verify, zlib's CRC-32", a, lambda: ours(a, zlib=1)))
        if against is not None:
            name = f"ckpttui verify of {against.parent.name}"
            plan.append((name, path, lambda path=path: ours(path, src=against)))
    rows: dict[tuple[str, Path], list[dict[str, float]]] = {}
    loads = [os.getloadavg()[0]]
    for _ in range(repeat):
        for name, path, run in plan:
            warm([path])
            result = run()
            result["info"] = 0
            rows.setdefault((name, path), []).append(result)
        loads.append(os.getloadavg()[0])
    print(
        f"\n## verify vs cat (warm page cache, {repeat} rounds, threads {bench_jobs_threads()})\n"
    )
    print(
        f"load average (1 min) during the rounds: {min(loads):.1f} to {max(loads):.1f} on "
        f"{os.cpu_count()} CPUs\n"
    )
    print(
        "| method | file | bytes | job time | rate | x cat (median of rounds) | range "
        "| CPU s | CPU x cat | peak RSS |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (name, path), runs in rows.items():
        m = median(runs)
        cats = rows[("cat", path)]
        ratios = [c["job"] / r["job"] for c, r in zip(cats, runs, strict=True)]
        size = path.stat().st_size
        cpu_ratio = median(cats)["cpu"] / m["cpu"] if m["cpu"] else 0.0
        rss = mib(m["rss"]) if m["rss"] else "-"
        print(
            f"| {name} | {path.name} | {size / 1e6:.0f} MB | {m['job']:.3f} s "
            f"| {size / m['job'] / 1e9:.2f} GB/s | {statistics.median(ratios):.0%} "
            f"| {min(ratios):.0%}-{max(ratios):.0%} | {m['cpu']:.2f} | {cpu_ratio:.0%} | {rss} |"
        )


def bench_jobs_threads() -> int:
    """The number of threads verify uses here (without importing it into this process)."""
    proc = child("from ckpttui.jobs.verify import THREADS\nprint(THREADS)\n", {})
    return int(proc.stdout.split()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "ckpttui-bench-vd"))
    ap.add_argument("--only", choices=["verify", "diff"])
    ap.add_argument("--against", type=Path, help="another checkout's src/ to verify with too")
    args = ap.parse_args()
    a, b, bf16, f16 = inputs(Path(args.dir), args.size_mb)
    if args.only != "diff":
        bench_verify(a, bf16, f16, args.repeat, args.against)
    if args.only == "verify":
        return

    diff_rows: dict[str, list[dict[str, float]]] = {}
    results = {}
    for _ in range(args.repeat):
        for name, code, one in (
            ("ckpttui diff", DIFF_CODE, 0),
            ("torch.load both + compare", TORCH_DIFF_CODE, 0),
            ("torch.load both + compare, 1 thread", TORCH_DIFF_CODE, 1),
        ):
            warm([a, b])
            run = measure(code, {"A": str(a), "B": str(b), "ONE_THREAD": one})
            results[name] = run.pop("info")
            run["info"] = 0
            diff_rows.setdefault(name, []).append(run)
    ref = median(diff_rows["torch.load both + compare"])
    print("\n## diff vs torch.load of both (warm page cache)\n")
    print("| method | command wall | x torch | job time | x torch | peak RSS | x torch |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, runs in diff_rows.items():
        m = median(runs)
        print(
            f"| {name} | {m['wall']:.2f} s | {m['wall'] / ref['wall']:.2f}x | {m['job']:.2f} s "
            f"| {m['job'] / ref['job']:.2f}x | {mib(m['rss'])} | {m['rss'] / ref['rss']:.2f}x |"
        )
    ours, theirs = results["ckpttui diff"], results["torch.load both + compare"]
    worst = 0.0
    for k, (eq, mx, rel) in theirs.items():
        o = ours[k]
        assert o[0] == eq, k
        worst = max(worst, abs(o[1] - mx) / (abs(mx) or 1.0), abs(o[2] - rel) / (abs(rel) or 1.0))
    print(f"\n{len(theirs)} tensors; largest relative disagreement with torch: {worst:.1e}")
    print(
        json.dumps({"a": str(a), "b": str(b), "bf16": str(bf16), "f16": str(f16)}), file=sys.stderr
    )


if __name__ == "__main__":
    main()
