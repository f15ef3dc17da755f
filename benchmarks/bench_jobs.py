"""Benchmark: `ckpttui` average and export jobs against their references on ~1.2 GB checkpoints.

Inputs (generated once, cached under ``--dir``): the FunASR-style ``model.pt.ep3`` of
`bench_inspect.make_checkpoint` (fp32 weights + AdamW state after one real step + scheduler +
bookkeeping), and four more epochs derived from it by scaling every weight in ``state_dict`` by
``1 + 0.01 * (epoch - 3)`` (epoch 3 is a hard link to the base file). Every measured program runs
in its own child process; peak RSS is the child's own ``VmHWM`` read at its end (``ru_maxrss``
survives exec from a big parent). Runs are round robin, ``sync`` before each, page cache warm in a
known state: each input's cached pages are dropped (``posix_fadvise(DONTNEED)``, our files only)
and it is read once with ``cat``, as after a first read from disk (readahead fills the cache with
large folios on recent kernels, and that changes how much a touch of a mapped file maps).

* average: ``ckpttui.jobs.average.average`` of the last N epochs into ``model.pt.avgN`` (FunASR's
  ``{"state_dict": ...}``), against fairseq's algorithm (``scripts/average_checkpoints.py``): a full
  ``torch.load(f, map_location="cpu", weights_only=True)`` of each file, a running sum of the
  weights (``state_dict`` here, ``clone`` of the first), divided at the end, ``torch.save``
  ``{"state_dict": avg}``. Also a child that only imports torch and ``ckpttui.jobs.average`` (the
  baseline peak RSS). Outputs of the two are compared with ``torch.equal``.
* export: ``ckpttui.jobs.export.export`` of the weights to ``.safetensors`` (as stored, and with
  ``dtype="bf16"``), against ``cat FILE > /dev/null`` of the same file; for context also
  ``dd`` copying as many bytes as the weights to the output folder with ``conv=fsync`` (what
  producing that many bytes on this disk costs, without any parsing or hashing; ckpttui fsyncs
  too).
* ``--what-if``: ckpttui again with the memory fixes proposed in RESULTS.md applied from outside
  ``src/`` (a monkeypatch and a glibc tunable; see `WHAT_IF_PATCH`), to measure them.

Note: ckpttui fsyncs its output, re-reads it to verify, and reports its sha256 (hashed while
writing; before 2026-12-02 a ``.pt`` was read back for it); the reference scripts do none of that.

    python benchmarks/bench_jobs.py [--size-mb 1200] [--repeat 3] [--n 2,5] [--dir DIR]
                                    [--only average|export] [--what-if]
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

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
sys.path.insert(0, str(SRC))
sys.path.insert(0, str(HERE))

from bench_inspect import make_checkpoint  # imports torch only when called

from ckpttui.formats import read_file  # no torch

MARK = "BENCH_RESULT "
EPOCHS = 5
_HWM = (
    "hwm = int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])\n"
    f"print({MARK!r} + json.dumps([t1 - t0, t2 - t1, hwm * 1024, INFO]), flush=True)\n"
)

BASELINE_CODE = (
    "import json, time\n"
    "t0 = time.perf_counter()\n"
    "import torch\n"
    "import ckpttui.jobs.average\n"
    "t1 = t2 = time.perf_counter()\n"
    "INFO = None\n"
) + _HWM

CK_AVERAGE_CODE = (
    "import json, time\n"
    "t0 = time.perf_counter()\n"
    "import torch\n"
    "from ckpttui.jobs.average import average\n"
    "t1 = time.perf_counter()\n"
    "INFO = None\n"
    "for event in average(INPUTS, OUT, force=True):\n"
    "    if event.kind == 'done':\n"
    "        INFO = event.data.get('tensor_bytes')\n"
    "t2 = time.perf_counter()\n"
) + _HWM

# fairseq scripts/average_checkpoints.py average_checkpoints(), with FunASR's key ("state_dict")
# for fairseq's ("model"); the first state is not kept (fairseq keeps it as new_state, which only
# adds to its memory) and the output is {"state_dict": avg}, as FunASR's model.pt.avgN.
FAIRSEQ_CODE = (
    "import collections, json, time\n"
    "t0 = time.perf_counter()\n"
    "import torch\n"
    "t1 = time.perf_counter()\n"
    "params_dict = collections.OrderedDict()\n"
    "for fpath in INPUTS:\n"
    "    state = torch.load(fpath, map_location='cpu', weights_only=True)\n"
    "    model_params = state['state_dict']\n"
    "    for k in list(model_params.keys()):\n"
    "        p = model_params[k]\n"
    "        if isinstance(p, torch.HalfTensor):\n"
    "            p = p.float()\n"
    "        if k not in params_dict:\n"
    "            params_dict[k] = p.clone()\n"
    "        else:\n"
    "            params_dict[k] += p\n"
    "averaged_params = collections.OrderedDict()\n"
    "for k, v in params_dict.items():\n"
    "    averaged_params[k] = v\n"
    "    if averaged_params[k].is_floating_point():\n"
    "        averaged_params[k].div_(len(INPUTS))\n"
    "    else:\n"
    "        averaged_params[k] //= len(INPUTS)\n"
    "torch.save({'state_dict': averaged_params}, OUT)\n"
    "INFO = None\n"
    "t2 = time.perf_counter()\n"
) + _HWM

CK_EXPORT_CODE = (
    "import json, time\n"
    "t0 = time.perf_counter()\n"
    "import torch\n"
    "from ckpttui.jobs.export import export\n"
    "t1 = time.perf_counter()\n"
    "INFO = None\n"
    "for event in export(SRC_FILE, OUT, dtype=DTYPE, force=True):\n"
    "    if event.kind == 'done':\n"
    "        INFO = event.data.get('tensor_bytes')\n"
    "t2 = time.perf_counter()\n"
) + _HWM

# --what-if: the two memory fixes proposed in RESULTS.md, applied from outside src/ (the child runs
# with MALLOC_MMAP_THRESHOLD_ set, see WHAT_IF_ENV): zip local headers read with os.pread instead
# of through the mapping (a 30-byte read through the mmap maps the whole page-cache folio around
# it, up to ~0.7 MB on this kernel, and nothing gives those pages back).
WHAT_IF_PATCH = (
    "import os as _os, zipfile as _zipfile\n"
    "from ckpttui.jobs import source as _S\n"
    "def _zip_offsets(self):\n"
    "    prefix = self.index.metadata.get('root', '') + '/data/'\n"
    "    with _zipfile.ZipFile(self._file) as archive:\n"
    "        infos = [i for i in archive.infolist() if i.filename.startswith(prefix)]\n"
    "    offsets = {}\n"
    "    for info in infos:\n"
    "        key = info.filename[len(prefix):]\n"
    "        if key in self.index.storages:\n"
    "            head = _os.pread(self._file.fileno(), _S._LOCAL_HEADER.size, info.header_offset)\n"
    "            magic, name_len, extra_len = _S._LOCAL_HEADER.unpack(head)\n"
    "            assert magic == _S._LOCAL_MAGIC and info.compress_type == _zipfile.ZIP_STORED\n"
    "            offsets[key] = info.header_offset + _S._LOCAL_HEADER.size + name_len + extra_len\n"
    "    return offsets\n"
    "_S.TensorSource._zip_offsets = _zip_offsets\n"
)
# ... and glibc's mmap threshold fixed at 1 MiB: with the default dynamic threshold, the per-tensor
# 4 MiB results (accumulators, casts) come from the brk heap after the first free, and the heap
# fragments: resident memory grows by about the output's size.
WHAT_IF_ENV = {"MALLOC_MMAP_THRESHOLD_": "1048576"}

CHECK_AVERAGE_CODE = (
    "import torch\n"
    "a = torch.load(A, weights_only=True)['state_dict']\n"
    "b = torch.load(B, weights_only=True)['state_dict']\n"
    "assert list(a) == list(b), 'keys differ'\n"
    "bad = [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]\n"
    "print(len(a), len(bad))\n"
)

CHECK_EXPORT_CODE = (
    "import torch, safetensors.torch\n"
    "sd = torch.load(SRC_FILE, weights_only=True, mmap=True)['state_dict']\n"
    "out = safetensors.torch.load_file(OUT)\n"
    "assert list(out) == list(sd), 'keys differ'\n"
    "dtype = getattr(torch, DTYPE) if DTYPE else None\n"
    "bad = [k for k in sd if not torch.equal(out[k], sd[k] if dtype is None else "
    "sd[k].to(dtype))]\n"
    "print(len(out), len(bad))\n"
)

GENERATE_CODE = (
    "import os, torch\n"
    "state = torch.load(BASE, map_location='cpu', weights_only=True)\n"
    "weights = {k: v.clone() for k, v in state['state_dict'].items()}\n"
    "for epoch, path in TARGETS:\n"
    "    scale = 1 + 0.01 * (epoch - 3)\n"
    "    state['state_dict'] = {k: v * scale if v.is_floating_point() else v.clone()\n"
    "                           for k, v in weights.items()}\n"
    "    state['epoch'] = epoch\n"
    "    tmp = path + '.tmp-bench'\n"
    "    torch.save(state, tmp)\n"
    "    os.replace(tmp, path)\n"
)


def child(
    code: str, variables: dict[str, object], env_extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter with `variables` bound (as Python literals)."""
    env = dict(os.environ, PYTHONPATH=str(SRC), **(env_extra or {}))
    head = "".join(f"{k} = {v!r}\n" for k, v in variables.items())
    proc = subprocess.run(
        [sys.executable, "-c", head + code], capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def measure(
    code: str, variables: dict[str, object], env_extra: dict[str, str] | None = None
) -> dict[str, float]:
    """Wall seconds of the whole child, its job seconds (after imports), peak RSS bytes, info."""
    subprocess.run(["sync"], check=True)
    t0 = time.perf_counter()
    proc = child(code, variables, env_extra)
    wall = time.perf_counter() - t0
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith(MARK))
    imports, job, rss, info = json.loads(line[len(MARK) :])
    return {"wall": wall, "imports": imports, "job": job, "rss": rss, "info": info or 0}


def measure_cmd(argv: list[str]) -> dict[str, float]:
    """Wall seconds of an external command (stdout to /dev/null)."""
    subprocess.run(["sync"], check=True)
    t0 = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - t0
    return {"wall": wall, "imports": 0.0, "job": wall, "rss": 0, "info": 0}


def median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def weight_bytes(path: Path) -> int:
    """Bytes of the tensors under ``state_dict`` (the model's weights), from the index alone."""
    index = read_file(path)
    return sum(t.nbytes for t in index.tensors if t.path and t.path[0] == "state_dict")


def warm(paths: list[Path]) -> None:
    """Drop each input's cached pages (ours only), then read it once with cat.

    The page cache is then warm and in one known state, the one after a first read from disk
    (readahead: large folios on recent kernels), whatever wrote or read the file before.
    """
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        subprocess.run(["cat", str(p)], stdout=subprocess.DEVNULL, check=True)


def unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def prepare(folder: Path, size_mb: int) -> list[Path]:
    """The base checkpoint and the 5 epochs (cached), in epoch order."""
    base = folder / f"model.pt.ep3-{size_mb}mb"
    if not base.exists():
        print(f"writing {base} ...", file=sys.stderr)
        make_checkpoint(base, size_mb)
    run = folder / f"average-{size_mb}mb"
    run.mkdir(exist_ok=True)
    paths = [run / f"model.pt.ep{e}" for e in range(1, EPOCHS + 1)]
    if not paths[2].exists():
        os.link(base, paths[2])
    missing = [(e, str(p)) for e, p in enumerate(paths, 1) if not p.exists()]
    if missing:
        print(f"writing {', '.join(p for _, p in missing)} ...", file=sys.stderr)
        child(GENERATE_CODE, {"BASE": str(base), "TARGETS": missing})
    return paths


def bench_average(
    paths: list[Path], ns: list[int], repeat: int, out_dir: Path, what_if: bool
) -> dict:
    one_model = weight_bytes(paths[-1])
    warm(paths)
    methods: dict[str, tuple[str, dict[str, str] | None]] = {
        "ckpttui average": (CK_AVERAGE_CODE, None),
        "fairseq algorithm": (FAIRSEQ_CODE, None),
    }
    if what_if:
        methods["what-if: ckpttui average, headers by pread + fixed mmap threshold"] = (
            WHAT_IF_PATCH + CK_AVERAGE_CODE,
            WHAT_IF_ENV,
        )
    runs: dict[tuple[str, int], list[dict[str, float]]] = {}
    base_runs = []
    for i in range(repeat):
        base_runs.append(measure(BASELINE_CODE, {}))
        for n in ns:
            inputs = [str(p) for p in paths[-n:]]
            for k, (name, (code, env)) in enumerate(methods.items()):
                out = out_dir / f"{('ck', 'fs', 'wi')[k]}.model.pt.avg{n}"
                unlink(out)  # each run writes a new file (no replacing: not timed)
                runs.setdefault((name, n), []).append(
                    measure(code, {"INPUTS": inputs, "OUT": str(out)}, env)
                )
                if n != ns[-1] or i != repeat - 1:
                    unlink(out)
    # outputs of the last run with the largest N: the same values?
    a, b = out_dir / f"ck.model.pt.avg{ns[-1]}", out_dir / f"fs.model.pt.avg{ns[-1]}"
    count, bad = child(CHECK_AVERAGE_CODE, {"A": str(a), "B": str(b)}).stdout.split()
    out_size = a.stat().st_size
    for p in out_dir.iterdir():
        unlink(p)
    base = median(base_runs)
    res = {k: median(v) for k, v in runs.items()}
    in_size = paths[-1].stat().st_size
    print(
        f"### average: inputs {in_size / 1e9:.2f} GB each, one model's weights "
        f"{one_model / 1e6:.1f} MB ({mib(one_model)}); median of {repeat} runs, warm cache\n"
    )
    print(
        f"Baseline (python + import torch, ckpttui.jobs.average): peak RSS "
        f"{mib(base['rss'])}, {base['wall']:.3f} s.\n"
    )
    print(
        "| N | method | command wall | x fairseq | job time | x fairseq | peak RSS | "
        "RSS above baseline | peak RSS / weights | above baseline / weights | x fairseq |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in ns:
        ref = res[("fairseq algorithm", n)]
        for name in methods:
            r = res[(name, n)]
            above = r["rss"] - base["rss"]
            print(
                f"| {n} | {name} | {r['wall']:.2f} s | {r['wall'] / ref['wall']:.2f}x | "
                f"{r['job']:.2f} s | {r['job'] / ref['job']:.2f}x | {mib(r['rss'])} | "
                f"{mib(above)} | {r['rss'] / one_model:.2f}x | {above / one_model:.2f}x | "
                f"{r['rss'] / ref['rss']:.2f}x |"
            )
    print(
        f"\nN={ns[-1]} outputs: {count} tensors, {bad} differ (torch.equal); ckpttui's "
        f"model.pt.avg{ns[-1]} is {out_size / 1e6:.1f} MB.\n"
    )
    return {
        "weight_bytes": one_model,
        "baseline": base,
        "runs": {f"{name} N={n}": r for (name, n), r in res.items()},
        "equal": [int(count), int(bad)],
    }


def bench_export(src: Path, repeat: int, out_dir: Path, what_if: bool) -> dict:
    size = src.stat().st_size
    w = weight_bytes(src)
    warm([src])
    dd_out = out_dir / "dd.out"
    methods: dict[str, tuple[str | None, dict[str, object] | list[str]]] = {
        "cat FILE > /dev/null": (None, ["cat", str(src)]),
        "ckpttui export -> .safetensors": (
            CK_EXPORT_CODE,
            {"SRC_FILE": str(src), "OUT": str(out_dir / "ck.fp32.safetensors"), "DTYPE": None},
        ),
        "ckpttui export --dtype bf16 -> .safetensors": (
            CK_EXPORT_CODE,
            {"SRC_FILE": str(src), "OUT": str(out_dir / "ck.bf16.safetensors"), "DTYPE": "bf16"},
        ),
        "context: dd weight-size bytes of FILE to the output folder, conv=fsync": (
            None,
            [
                "dd",
                f"if={src}",
                f"of={dd_out}",
                "bs=4M",
                f"count={w}",
                "iflag=count_bytes",
                "conv=fsync",
            ],
        ),
    }
    if what_if:
        methods["what-if: ckpttui export, headers by pread + fixed mmap threshold"] = (
            WHAT_IF_PATCH + CK_EXPORT_CODE,
            {"SRC_FILE": str(src), "OUT": str(out_dir / "wi.fp32.safetensors"), "DTYPE": None},
        )
        methods["what-if: same, --dtype bf16"] = (
            WHAT_IF_PATCH + CK_EXPORT_CODE,
            {"SRC_FILE": str(src), "OUT": str(out_dir / "wi.bf16.safetensors"), "DTYPE": "bf16"},
        )
    runs: dict[str, list[dict[str, float]]] = {}
    for _ in range(repeat):
        for name, (code, spec) in methods.items():
            if code is None:
                assert isinstance(spec, list)
                runs.setdefault(name, []).append(measure_cmd(spec))
                unlink(dd_out)
            else:
                assert isinstance(spec, dict)
                unlink(Path(str(spec["OUT"])))  # each run writes a new file (not timed)
                runs.setdefault(name, []).append(
                    measure(code, spec, WHAT_IF_ENV if name.startswith("what-if") else None)
                )
    checks = {}
    for name, (code, spec) in methods.items():
        if code is not None:
            assert isinstance(spec, dict)
            checks[name] = child(
                CHECK_EXPORT_CODE,
                {**spec, "DTYPE": ("bfloat16" if spec["DTYPE"] == "bf16" else None)},
            ).stdout.split()
            unlink(Path(str(spec["OUT"])))
    res = {k: median(v) for k, v in runs.items()}
    cat = res["cat FILE > /dev/null"]
    cat_rate = size / cat["wall"]
    print(
        f"### export: {src.name}, {size / 1e9:.3f} GB file, weights {w / 1e6:.1f} MB "
        f"({w / size:.0%} of it); median of {repeat} runs, warm cache\n"
    )
    print(
        "Rates: cat = file bytes / cat wall; export = weight bytes produced (written) / job "
        "time (after interpreter start and imports), and / command wall; in-rate = source "
        "weight bytes / job time.\n"
    )
    print(
        "| method | command wall | x cat | job time | x cat | bytes produced | rate (job) | "
        "x cat rate | rate (wall) | x cat rate | in-rate (job) | x cat rate | peak RSS |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in res.items():
        if name.startswith("cat"):
            produced = size
        elif name.startswith("context"):
            produced = w
        else:
            produced = int(r["info"])
        rate_job = produced / r["job"]
        rate_wall = produced / r["wall"]
        in_rate = (w if not name.startswith("cat") else size) / r["job"]
        print(
            f"| {name} | {r['wall']:.3f} s | {r['wall'] / cat['wall']:.2f}x | "
            f"{r['job']:.3f} s | {r['job'] / cat['wall']:.2f}x | {produced / 1e6:.0f} MB | "
            f"{rate_job / 1e9:.2f} GB/s | {rate_job / cat_rate:.0%} | "
            f"{rate_wall / 1e9:.2f} GB/s | {rate_wall / cat_rate:.0%} | "
            f"{in_rate / 1e9:.2f} GB/s | {in_rate / cat_rate:.0%} | "
            f"{mib(r['rss']) if r['rss'] else '-'} |"
        )
    print(
        "\nOutputs equal to torch.load's state_dict (cast for bf16): "
        + "; ".join(f"{k}: {n} tensors, {bad} differ" for k, (n, bad) in checks.items())
        + "\n"
    )
    return {"file_bytes": size, "weight_bytes": w, "runs": res, "checks": checks}


def main() -> None:
    """Generate the inputs if needed, run both benchmarks, print the tables (and a JSON line)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=1200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--n", default="2,5", help="numbers of checkpoints to average (<= 5)")
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "ckpttui-bench"))
    ap.add_argument("--only", choices=["average", "export"])
    ap.add_argument(
        "--what-if",
        action="store_true",
        help="also run ckpttui with the proposed memory fixes applied from outside",
    )
    args = ap.parse_args()
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = prepare(folder, args.size_mb)
    ns = sorted(int(n) for n in args.n.split(","))
    out_dir = Path(tempfile.mkdtemp(prefix="jobs-out-", dir=folder))
    result = {}
    try:
        if args.only in (None, "average"):
            result["average"] = bench_average(paths, ns, args.repeat, out_dir, args.what_if)
        if args.only in (None, "export"):
            result["export"] = bench_export(paths[2], args.repeat, out_dir, args.what_if)
    finally:
        for p in out_dir.iterdir():
            unlink(p)
        out_dir.rmdir()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
