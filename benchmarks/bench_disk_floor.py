"""Benchmark: export, merge and average against the disk floor (the physical copy of their bytes).

For each job, side by side in the same round (round robin, ``--repeat`` rounds, medians):

* the job itself, a whole ``python -c`` command in a fresh process (interpreter start and imports
  included; ckpttui fsyncs, verifies and hashes its output);
* the read floor: ``cat`` of exactly the bytes the job reads (the tensors' byte ranges of each
  input, read with ``pread`` in 16 MiB requests: ``cat`` of those bytes without the rest of the
  file; the ``cat FILE`` of the whole inputs is shown beside it for context);
* the write floor: ``dd if=/dev/zero of=OUT_DIR/dd.bin bs=16M conv=fsync`` of as many bytes as
  the job writes, in the output's folder.

The ratio is the job's wall time over (read floor + write floor) of the same round, median over
the rounds (each round's ratio is listed too); the target is <= 1.5x. Both sides start from the
same cache state: before each side (the job; the floors), ``sync`` and
``echo 1 > /proc/sys/vm/drop_caches`` (writing new pages into a full page cache costs reclaim:
dd's time for 428 MB went from 0.10 s to 1.16 s with the cache full), then every input read once
with ``cat`` and the job's imports run once (its code's pages are warm, as ``cat``'s are). Dropping caches needs root; without it a note is printed and only the inputs' own
pages are dropped and re-read. The sides alternate which goes first from one round to the next.

Inputs (cached under ``--dir``): `bench_jobs.prepare`'s FunASR-style epochs (fp32 weights, AdamW
state, scheduler; ``--size-mb`` each, weights about a third), and an HF folder of 3 safetensors
shards + index holding epoch 3's weights (written by ckpttui's export). Jobs:

* ``export ep3 -> .safetensors`` and ``export ep3 -> .pt`` (FunASR's slim layout);
* ``merge HF shards -> .safetensors`` (3 shards into one file);
* ``average last 2`` and ``average last 5`` epochs -> ``model.pt.avgN``.

    python benchmarks/bench_disk_floor.py [--size-mb 1250] [--repeat 5] [--dir DIR] [--only NAME]
                                          [--src OTHER_CHECKOUT/src] [--no-drop]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from _child import child_env, remove, report, run_child

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from bench_jobs import prepare, warm

from ckpttui.formats import read_file

CHUNK = 16 << 20

IMPORT_CODE = (
    "import sys, time\nt0 = time.perf_counter()\nfrom ckpttui.jobs.{module} import {func}\n"
)
JOB_CODE = (
    IMPORT_CODE + "t1 = time.perf_counter()\n"
    "for event in {func}({args}, force=True):\n"
    "    if event.kind == 'done':\n"
    "        OUT_BYTES = event.data['bytes']\n"
    "t2 = time.perf_counter()\n"
    "TORCH = 'torch' in sys.modules\n"
) + report("[t1 - t0, t2 - t1, hwm * 1024, OUT_BYTES, TORCH]")


@dataclass
class Job:
    """One measured job: its code, inputs, the byte ranges it reads, and its output."""

    name: str
    code: str
    names: dict[str, object]
    inputs: list[Path]
    ranges: list[tuple[Path, int, int]]
    out: Path
    module: str
    func: str
    runs: list[dict[str, float]] = field(default_factory=list)
    size: int = 0
    """Bytes the job writes (set by its runs; the first round runs the job first)."""


def tensor_ranges(
    path: Path, keep: Callable[[tuple[str, ...]], bool]
) -> list[tuple[Path, int, int]]:
    """(file, offset, length) of each stored tensor whose key path `keep` accepts (each storage
    once), as the job reads them."""
    from ckpttui.jobs.source import TensorSource

    index = read_file(path)
    with TensorSource(path, index) as source:
        seen: dict[tuple[int, int], None] = {}
        for rec in index.tensors:
            if not keep(rec.path):
                continue
            where = source.byte_range(rec)
            if where is not None:
                seen.setdefault(where, None)
    return [(path, start, length) for start, length in seen]


def read_floor(ranges: list[tuple[Path, int, int]]) -> float:
    """Seconds to ``pread`` exactly these byte ranges (what ``cat`` of them would cost)."""
    buf = memoryview(bytearray(CHUNK))
    fds: dict[Path, int] = {}
    t0 = time.perf_counter()
    for path, start, length in ranges:
        fd = fds.get(path)
        if fd is None:
            fd = fds[path] = os.open(path, os.O_RDONLY)
        pos = 0
        while pos < length:
            n = os.preadv(fd, [buf[: min(CHUNK, length - pos)]], start + pos)
            if n <= 0:
                raise RuntimeError(f"{path}: short read")
            pos += n
    wall = time.perf_counter() - t0
    for fd in fds.values():
        os.close(fd)
    return wall


def timed(argv: list[str]) -> float:
    """Wall seconds of a command (after ``sync``)."""
    os.sync()
    t0 = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def drop_caches() -> bool:
    """``sync`` and drop the clean page cache (``echo 1 > /proc/sys/vm/drop_caches``); False
    when not permitted."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
    except OSError:
        return False
    return True


def fresh_start(job: Job, env: dict[str, str], drop: bool) -> bool:
    """The state each side starts from: caches dropped (when `drop` and permitted), then the
    inputs read once with ``cat`` and the job's imports run once in a throwaway interpreter (the
    code's pages, dropped too, would otherwise be read from disk inside the job's time, as
    ``cat``'s and ``dd``'s few pages are inside theirs); returns whether caches were dropped."""
    dropped = drop and drop_caches()
    warm(job.inputs)
    run_child(IMPORT_CODE.format(module=job.module, func=job.func) + report("0"), {}, env)
    return dropped


def write_floor(folder: Path, nbytes: int) -> float:
    """Seconds for ``dd conv=fsync`` to write `nbytes` (rounded up to 16 MiB) into `folder`."""
    target = folder / "dd.bin"
    count = max(1, -(-nbytes // CHUNK))
    wall = timed(["dd", "if=/dev/zero", f"of={target}", "bs=16M", f"count={count}", "conv=fsync"])
    target.unlink()
    return wall


def make_hf_shards(src: Path, folder: Path, shard_bytes: int) -> None:
    """An HF folder of safetensors shards + index with `src`'s weights (ckpttui's export)."""
    if (folder / "model.safetensors.index.json").is_file():
        return
    remove(folder)
    code = (
        "from ckpttui.jobs.export import export\n"
        "for _ in export(SRC, OUT, max_shard_size=SHARD):\n    pass\n"
    ) + report("0")
    run_child(code, {"SRC": src, "OUT": folder, "SHARD": shard_bytes})


def jobs_for(paths: list[Path], root: Path, only: str | None) -> list[Job]:
    out_dir = root / "out"
    out_dir.mkdir(exist_ok=True)
    ep3 = paths[2]
    weights = tensor_ranges(ep3, lambda p: p[:1] == ("state_dict",))
    weight_bytes = sum(n for _, _, n in weights)
    shards = root / f"hf-shards-{ep3.stat().st_size >> 20}mb"
    make_hf_shards(ep3, shards, -(-weight_bytes // 3))
    shard_files = sorted(shards.glob("*.safetensors"))
    jobs = []

    def add(
        name: str,
        module: str,
        func: str,
        args: str,
        names: dict[str, object],
        inputs: list[Path],
        ranges: list[tuple[Path, int, int]],
        out: Path,
    ) -> None:
        code = JOB_CODE.format(module=module, func=func, args=args)
        jobs.append(Job(name, code, {**names, "OUT": out}, inputs, ranges, out, module, func))

    for what, out in ((".safetensors", "export.safetensors"), (".pt (slim)", "model.pt.slim")):
        add(
            f"export ep3 -> {what}",
            "export",
            "export",
            "SRC, OUT",
            {"SRC": ep3},
            [ep3],
            weights,
            out_dir / out,
        )
    add(
        "merge 3 HF shards -> .safetensors",
        "merge",
        "merge",
        "SRC, OUT",
        {"SRC": shards},
        shard_files,
        [r for f in shard_files for r in tensor_ranges(f, lambda p: True)],
        out_dir / "merged.safetensors",
    )
    for n in (2, 5):
        chosen = paths[-n:]
        ranges = [r for p in chosen for r in tensor_ranges(p, lambda k: k[:1] == ("state_dict",))]
        add(
            f"average last {n} -> .pt",
            "average",
            "average",
            "INPUTS, OUT",
            {"INPUTS": [str(p) for p in chosen]},
            chosen,
            ranges,
            out_dir / f"model.pt.avg{n}",
        )
    return [j for j in jobs if only is None or only in j.name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/jobspeed-bench"))
    parser.add_argument("--size-mb", type=int, default=1250)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--no-drop", action="store_true", help="do not drop the page cache before each side"
    )
    parser.add_argument("--only", help="run the jobs whose name contains this")
    parser.add_argument("--src", type=Path, help="run the jobs from another ckpttui src folder")
    args = parser.parse_args()
    env = child_env()
    if args.src is not None:
        env["PYTHONPATH"] = str(args.src.resolve())
    args.dir.mkdir(parents=True, exist_ok=True)
    paths = prepare(args.dir, args.size_mb)
    jobs = jobs_for(paths, args.dir, args.only)
    load = []
    dropped = True
    for r in range(args.repeat):
        for job in jobs:

            def ours(job: Job = job) -> dict[str, float]:
                remove(job.out)
                wall, (imports, work, hwm, out_bytes, torch) = run_child(job.code, job.names, env)
                remove(job.out)
                job.size = out_bytes  # what the write floor writes
                return {
                    "wall": wall,
                    "imports": imports,
                    "job": work,
                    "rss": hwm,
                    "out": out_bytes,
                    "torch": float(torch),
                }

            def floor(job: Job = job) -> dict[str, float]:
                read = read_floor(job.ranges)
                write = write_floor(job.out.parent, job.size)
                return {"read": read, "write": write, "cat": timed(["cat", *map(str, job.inputs)])}

            run: dict[str, float] = {}
            sides = (ours, floor) if r % 2 == 0 else (floor, ours)
            for side in sides:
                dropped = fresh_start(job, env, not args.no_drop) and dropped
                load.append(os.getloadavg()[0])
                run.update(side())
            run["x_wall"] = run["wall"] / (run["read"] + run["write"])
            run["x_job"] = run["job"] / (run["read"] + run["write"])
            job.runs.append(run)
            print(
                f"round {r + 1}: {job.name}: "
                + ", ".join(f"{k} {v:.3f}" for k, v in run.items() if k not in ("rss", "out")),
                file=sys.stderr,
                flush=True,
            )
    if not dropped:
        print(
            "note: the page cache could not be dropped (not root): each side started from its "
            "inputs' pages re-read, not from the same cache state",
            file=sys.stderr,
        )
    print(
        f"\nckpttui from {args.src or 'this checkout'}; {args.size_mb} MB inputs, median of "
        f"{args.repeat} rounds; caches {'dropped' if dropped else 'NOT dropped'} before each "
        f"side; load average (1 min) "
        f"{min(load):.1f}-{max(load):.1f} during the runs\n"
    )
    print(
        "| job | read MB | written MB | read floor s | write floor s | floor s | ckpttui wall s "
        "| x floor | job s (after imports) | x floor | imports s | torch imported | peak RSS MiB "
        "| cat of whole inputs s | x floor per round |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|")
    for job in jobs:
        med = {k: statistics.median(r[k] for r in job.runs) for k in job.runs[0]}
        floor = med["read"] + med["write"]
        read_mb = sum(n for _, _, n in job.ranges) / 1e6
        rounds = " ".join(f"{r['x_wall']:.2f}" for r in job.runs)
        print(
            f"| {job.name} | {read_mb:.0f} | {med['out'] / 1e6:.0f} | {med['read']:.3f} "
            f"| {med['write']:.3f} | {floor:.3f} | {med['wall']:.3f} | {med['x_wall']:.2f} "
            f"| {med['job']:.3f} | {med['x_job']:.2f} | {med['imports']:.3f} "
            f"| {'yes' if med['torch'] else 'no'} | {med['rss'] / 2**20:.0f} | {med['cat']:.3f} "
            f"| {rounds} |"
        )


if __name__ == "__main__":
    main()
