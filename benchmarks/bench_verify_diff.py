"""Benchmark: `ckpttui verify` against `cat`, and `ckpttui diff` against torch.load of both inputs.

Inputs (generated once, cached under ``--dir``): the FunASR-style ``model.pt.ep3`` of
`bench_inspect.make_checkpoint` (fp32 weights + AdamW state + scheduler, ``--size-mb``), an
``ep4`` with every weight scaled by 1.01 (diff's B), and the weights of ep3 as a bf16
safetensors file (verify's bf16 path). Every measured program runs in its own child process;
peak RSS is the child's own ``VmHWM``; the page cache is warm in a known state before each run
(`bench_jobs.warm`: our files' pages dropped, then read once with cat). Runs are round robin.

* verify: ``ckpttui.jobs.verify.verify`` (CRC-32 of every zip record, NaN/Inf, zero, per-tensor
  statistics) against ``cat FILE > /dev/null``; also with zlib's CRC-32 instead of ISA-L's
  (what a machine without ``isal`` gets).
* diff: ``ckpttui.jobs.diff.diff(ep3, ep4)`` (float64, chunked) against what a user scripts:
  ``torch.load(weights_only=True)`` of both files, then for each weight the same three numbers
  (``torch.equal``, max |B-A| and ||B-A||/||A|| in float64). Results are compared.

    python benchmarks/bench_verify_diff.py [--size-mb 1000] [--repeat 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_inspect import make_checkpoint  # imports torch only when called
from bench_jobs import MARK, child, measure, measure_cmd, median, mib, warm

_HWM = (
    "hwm = int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])\n"
    f"print({MARK!r} + json.dumps([t1 - t0, t2 - t1, hwm * 1024, INFO]), flush=True)\n"
)

VERIFY_CODE = (
    "import json, time\n"
    "t0 = time.perf_counter()\n"
    "from ckpttui.jobs import verify as V\n"
    "if ZLIB:\n"
    "    import zlib\n"
    "    V.crc32 = zlib.crc32\n"
    "t1 = time.perf_counter()\n"
    "INFO = None\n"
    "for event in V.verify(PATH):\n"
    "    if event.kind == 'done':\n"
    "        INFO = [event.data['bytes_read'], event.data['healthy']]\n"
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
    "state['state_dict'] = {k: v * 1.01 if v.is_floating_point() else v\n"
    "                       for k, v in state['state_dict'].items()}\n"
    "state['epoch'] = 4\n"
    "torch.save(state, B + '.tmp')\n"
    "os.replace(B + '.tmp', B)\n"
)


def inputs(folder: Path, size_mb: int) -> tuple[Path, Path, Path]:
    """ep3, ep4 and the bf16 weights, generated once."""
    folder.mkdir(parents=True, exist_ok=True)
    a, b, bf16 = (
        folder / "model.pt.ep3",
        folder / "model.pt.ep4",
        folder / "weights.bf16.safetensors",
    )
    if not a.exists():
        print(f"generating {a} ({size_mb} MB)...", file=sys.stderr)
        make_checkpoint(a, size_mb)
    if not b.exists() or not bf16.exists():
        print(f"deriving {b.name} and {bf16.name}...", file=sys.stderr)
        child(DERIVE_CODE, {"BASE": str(a), "B": str(b), "BF16": str(bf16)})
    return a, b, bf16


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "ckpttui-bench-vd"))
    args = ap.parse_args()
    a, b, bf16 = inputs(Path(args.dir), args.size_mb)

    verify_rows: dict[str, list[dict[str, float]]] = {}
    plan = [
        ("cat model.pt.ep3", lambda: measure_cmd(["cat", str(a)]), a),
        ("verify model.pt.ep3", lambda: measure(VERIFY_CODE, {"PATH": str(a), "ZLIB": 0}), a),
        (
            "verify model.pt.ep3, zlib CRC",
            lambda: measure(VERIFY_CODE, {"PATH": str(a), "ZLIB": 1}),
            a,
        ),
        ("cat weights.bf16.safetensors", lambda: measure_cmd(["cat", str(bf16)]), bf16),
        (
            "verify weights.bf16.safetensors",
            lambda: measure(VERIFY_CODE, {"PATH": str(bf16), "ZLIB": 0}),
            bf16,
        ),
    ]
    for _ in range(args.repeat):
        for name, run, path in plan:
            warm([path])
            result = run()
            info = result.pop("info")
            result["info"] = 0
            if info and info[1] is not True:
                print(f"  ! {name}: not healthy: {info}", file=sys.stderr)
            verify_rows.setdefault(name, []).append(result)
    print("\n## verify vs cat (warm page cache)\n")
    print("| method | file | bytes | command wall | job time | rate (job) | x cat | peak RSS |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, runs in verify_rows.items():
        m = median(runs)
        path = a if "ep3" in name else bf16
        size = path.stat().st_size
        cat = median(verify_rows[f"cat {path.name}"])
        rate = size / m["job"] / 1e9
        ratio = cat["job"] / m["job"]
        rss = mib(m["rss"]) if m["rss"] else "-"
        print(
            f"| {name} | {path.name} | {size / 1e6:.0f} MB | {m['wall']:.2f} s | {m['job']:.3f} s "
            f"| {rate:.2f} GB/s | {ratio:.0%} | {rss} |"
        )

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
    print(json.dumps({"a": str(a), "b": str(b), "bf16": str(bf16)}), file=sys.stderr)


if __name__ == "__main__":
    main()
