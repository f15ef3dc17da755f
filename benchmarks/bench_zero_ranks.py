"""Benchmark: ckpttui's ZeRO-3 merge on many ranks (64 by default) against DeepSpeed's own.

How the many-rank checkpoint is made (``--dir``, default /tmp/ckpttui-bench-zero):

1. A real ZeRO-3 checkpoint: ``ckpttui.demo.ds_writer``'s model widened (hidden 4096, 18 x
   Linear(4096, 4096): 302M parameters) trained one AdamW step by a real DeepSpeed engine on 2
   CPU ranks (gloo), bf16 weights with fp32 master copies (``ranks2/``).
2. Re-partitioned to ``--ranks`` ranks with DeepSpeed's own ZeRO-3 rule
   (``deepspeed/runtime/zero/partition_parameters.py``: each parameter, in ``param_shapes``
   order, is split into ``ceil(numel / world)`` elements per rank, the last ranks zero-padded;
   a rank's flat group is its pieces concatenated): every per-rank flat tensor of the optimizer
   files (``fp32_flat_groups`` and the Adam ``exp_avg`` / ``exp_avg_sq`` of the same length) is
   re-cut that way, ``partition_count`` set to the new world size, and each rank's model-states
   file is rank 0's (ZeRO-3 model-state files carry no parameter data, only shapes, buffers and
   the config). ``zero_pp_rank_R_mp_rank_00_{optim,model}_states.pt`` for R in 0..N-1
   (``ranksN/``). Files are re-saved with torch.save (our own files; the benchmark may load them).
3. DeepSpeed's ``get_fp32_state_dict_from_zero_checkpoint`` on ``ranksN`` must equal its result on
   ``ranks2`` (checked), so the re-partitioned checkpoint is one DeepSpeed reads as the same model.

Then each tool runs in its own process on both folders, ``--repeat`` times round robin:
DeepSpeed ``zero_to_fp32.py SAVE OUT --safe_serialization`` (its CLI) and ckpttui
``merge_zero(SAVE, OUT.safetensors)``; the table gives median wall time, peak RSS (``VmHWM``) and,
for ckpttui, the most file descriptors open at once. Outputs are checked equal to DeepSpeed's.

    python benchmarks/bench_zero_ranks.py [--ranks 64] [--repeat 2] [--dir DIR] [--workers 4]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _child import SRC, child_env, remove, report, run_child

sys.path.insert(0, str(SRC))

from ckpttui.demo import ds_writer

HWM = report("[hwm * 1024, FDS]")
DS_ENV = child_env(DS_ACCELERATOR="cpu")
DS_CODE = (
    "import json, runpy, sys\n"
    "FDS = 0\n"
    "sys.argv = [SCRIPT, SAVE, OUT_DIR, '--safe_serialization']\n"
    "runpy.run_path(SCRIPT, run_name='__main__')\n"
) + HWM
CK_CODE = (
    "import json, os\n"
    "from ckpttui.jobs.merge import merge_zero\n"
    "FDS = 0\n"
    "for _ in merge_zero(SAVE, OUT_DIR + '/model.safetensors', workers=WORKERS):\n"
    "    FDS = max(FDS, len(os.listdir('/proc/self/fd')))\n"
) + HWM

REPARTITION = r"""
import json, math, shutil, sys
from pathlib import Path
import torch

src, dst, world = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
tag = (src / "latest").read_text().strip()
sdir, ddir = src / tag, dst / tag
ddir.mkdir(parents=True)
optim = sorted(sdir.glob("*zero_pp_rank_*_optim_states.pt"),
               key=lambda p: int(p.name.split("zero_pp_rank_")[1].split("_")[0]))
prefix = optim[0].name.split("zero_pp_rank_")[0]
old = len(optim)
model0 = torch.load(sdir / "zero_pp_rank_0_mp_rank_00_model_states.pt", weights_only=False)
numels = [math.prod(s) for group in model0["param_shapes"] for s in group.values()]
states = [torch.load(p, weights_only=False) for p in optim]

def recut(flats):
    # flats[r]: rank r's flat vector (all sub-groups); returns the new ranks' flat vectors
    pieces = [[] for _ in range(world)]
    offset = 0
    for n in numels:
        po, pn = math.ceil(n / old), math.ceil(n / world)
        full = torch.cat([f[offset:offset + po] for f in flats])[:n]
        full = torch.cat([full, full.new_zeros(pn * world - n)])
        for r in range(world):
            pieces[r].append(full[r * pn:(r + 1) * pn])
        offset += po
    assert all(offset == f.numel() for f in flats), (offset, [f.numel() for f in flats])
    return [torch.cat(p) for p in pieces]

osds = [s["optimizer_state_dict"] for s in states]
fp32 = recut([torch.cat(list(o["fp32_flat_groups"])) for o in osds])
inner = [o["optimizer_state_dict"] for o in osds]
assert len(inner[0]["state"]) == 1, "one sub-group expected"
key = next(iter(inner[0]["state"]))
new_inner = {}
for name, value in inner[0]["state"][key].items():
    if torch.is_tensor(value) and value.dim() == 1 and value.numel() == osds[0]["fp32_flat_groups"][0].numel():
        new_inner[name] = recut([i["state"][key][name] for i in inner])
for r in range(world):
    out = dict(states[0])
    o = dict(osds[0])
    o["partition_count"] = world
    o["fp32_flat_groups"] = [fp32[r].clone()]
    st = {k: (new_inner[k][r].clone() if k in new_inner else v)
          for k, v in inner[0]["state"][key].items()}
    o["optimizer_state_dict"] = {"state": {key: st}, "param_groups": inner[0]["param_groups"]}
    out["optimizer_state_dict"] = o
    torch.save(out, ddir / f"{prefix}zero_pp_rank_{r}_mp_rank_00_optim_states.pt")
    shutil.copyfile(sdir / "zero_pp_rank_0_mp_rank_00_model_states.pt",
                    ddir / f"zero_pp_rank_{r}_mp_rank_00_model_states.pt")
del states, osds, inner, fp32, new_inner
shutil.copyfile(src / "latest", dst / "latest")
shutil.copyfile(src / "zero_to_fp32.py", dst / "zero_to_fp32.py")
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint as ds
a, b = ds(str(src)), ds(str(dst))
assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a), "re-partition differs"
print("re-partitioned and checked:", len(a), "tensors")
"""


def run_once(code: str, save: Path, out_dir: Path, workers: int) -> tuple[float, int, int]:
    """(wall seconds, peak RSS bytes, most open fds) of one tool in a fresh process."""
    remove(out_dir)
    out_dir.mkdir(parents=True)
    names = {"SCRIPT": save / "zero_to_fp32.py", "SAVE": save, "OUT_DIR": out_dir}
    wall, (hwm, fds) = run_child(code, {**names, "WORKERS": workers}, DS_ENV)
    return wall, hwm, fds


def disk_floor(save: Path, out_dir: Path, out_bytes: int) -> tuple[float, float, int]:
    """(read s, write s, bytes read): pread of exactly the fp32 bytes the merge reads, and
    ``dd conv=fsync`` of as many bytes as it writes (the physical copy it is measured against)."""
    from ckpttui.jobs.zero import FlatVector, open_zero, resolve_tag_dir

    ckpt = open_zero(resolve_tag_dir(save))
    ranges = []
    for o in ckpt.optim:
        groups = o.get("optimizer_state_dict", "fp32_flat_groups")
        vector = FlatVector([(o, ref) for ref in groups])
        ranges += [(o.path, r) for r in vector.ranges if r is not None]
    ckpt.close()
    buf = bytearray(16 << 20)
    os.sync()
    t0 = time.perf_counter()
    total = 0
    for path, (start, length) in ranges:
        fd = os.open(path, os.O_RDONLY)
        pos = 0
        while pos < length:
            n = os.preadv(fd, [memoryview(buf)[: min(len(buf), length - pos)]], start + pos)
            pos += n
        os.close(fd)
        total += length
    read = time.perf_counter() - t0
    target = out_dir / "dd.bin"
    t0 = time.perf_counter()
    subprocess.run(
        [
            "dd",
            "if=/dev/zero",
            f"of={target}",
            "bs=16M",
            f"count={-(-out_bytes // (16 << 20))}",
            "conv=fsync",
        ],
        check=True,
        capture_output=True,
    )
    write = time.perf_counter() - t0
    target.unlink()
    return read, write, total


def same_output(a: Path, b: Path) -> bool:
    """Two safetensors files with the same keys and bit-equal values."""
    import torch
    from safetensors import safe_open

    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        if set(fa.keys()) != set(fb.keys()):
            return False
        return all(torch.equal(fa.get_tensor(k), fb.get_tensor(k)) for k in fa.keys())  # noqa: SIM118


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/ckpttui-bench-zero"))
    parser.add_argument("--ranks", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--layers", type=int, default=18)
    args = parser.parse_args()
    root = args.dir
    two = root / "ranks2"
    many = root / f"ranks{args.ranks}"
    if not (two / "latest").is_file():
        config = ds_writer.DSConfig("z3", 3, "bf16", hidden=args.hidden, layers=args.layers)
        t0 = time.perf_counter()
        dirs = ds_writer.write_deepspeed_checkpoints(two, [config], world_size=2, steps=1)
        made = dirs["z3"]
        if made != two:
            for item in made.iterdir():
                shutil.move(str(item), two / item.name)
        print(f"trained + saved in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if not (many / "latest").is_file():
        if many.exists():
            shutil.rmtree(many)
        t0 = time.perf_counter()
        cmd = [sys.executable, "-c", REPARTITION, str(two), str(many), str(args.ranks)]
        subprocess.run(cmd, check=True, env=DS_ENV)
        print(f"re-partitioned in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    rows = {}
    for save in (two, many):
        runs: dict[str, list[tuple[float, int, int]]] = {"DeepSpeed": [], "ckpttui": []}
        for _ in range(args.repeat):
            for tool, code in (("DeepSpeed", DS_CODE), ("ckpttui", CK_CODE)):
                runs[tool].append(run_once(code, save, root / f"out_{tool}", args.workers))
                print(save.name, tool, runs[tool][-1], file=sys.stderr, flush=True)
        equal = same_output(
            root / "out_DeepSpeed" / "model.safetensors", root / "out_ckpttui" / "model.safetensors"
        )
        out_bytes = (root / "out_ckpttui" / "model.safetensors").stat().st_size
        floor = disk_floor(save, root / "out_ckpttui", out_bytes)
        rows[save.name] = (runs, equal, floor)
    size = sum(p.stat().st_size for p in many.rglob("*.pt"))
    print(f"\n{args.ranks}-rank folder {size / 1e9:.2f} GB; median of {args.repeat}\n")
    print("| ranks | tool | wall s | peak RSS MB | RSS x DS | open fds | output |")
    print("|---|---|---:|---:|---:|---:|---|")
    for name, (runs, equal, _) in rows.items():
        ds_rss = statistics.median(h for _, h, _ in runs["DeepSpeed"])
        for tool, r in runs.items():
            w = statistics.median(x for x, _, _ in r)
            h = statistics.median(x for _, x, _ in r)
            fds = max(x for _, _, x in r) if tool == "ckpttui" else ""
            same = "equal to DeepSpeed's" if equal else "DIFFERS"
            print(
                f"| {name.removeprefix('ranks')} | {tool} | {w:.1f} | {h / 2**20:.0f} "
                f"| {h / ds_rss:.2f} | {fds} | {same if tool == 'ckpttui' else ''} |"
            )
    print(
        "\n| ranks | read floor s (pread of the fp32 bytes) | write floor s (dd conv=fsync) "
        "| ckpttui wall / (read + write) |"
    )
    print("|---|---:|---:|---:|")
    for name, (runs, _, (read, write, nbytes)) in rows.items():
        w = statistics.median(x for x, _, _ in runs["ckpttui"])
        print(
            f"| {name.removeprefix('ranks')} | {read:.2f} ({nbytes / 1e9:.2f} GB) | {write:.2f} "
            f"| {w / (read + write):.2f} |"
        )


if __name__ == "__main__":
    main()
