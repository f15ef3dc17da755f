"""Write real DeepSpeed ZeRO checkpoints on a CPU-only machine by running a real engine.

The caller never imports torch or deepspeed: every launch runs in a child process tree
(``python -m ckpttui.demo.ds_writer ...``), which for more than one rank spawns the rank
processes with ``torch.multiprocessing.start_processes(start_method="spawn")``. All configs
for one world size are written by ONE launch: each rank loops over the configs, calling
``deepspeed.initialize`` again per config.

CPU specifics (DeepSpeed 0.19): ``DS_ACCELERATOR=cpu`` selects the gloo backend (oneCCL is not
installed). Its comm backend would JIT-compile a C++ shared-memory op (``ShareMemCommBuilder``,
about 45 s, needs g++/ninja) in ``TorchBackend.__init__`` through the module global
``deepspeed.comm.torch.build_shm_op``; gloo alone suffices, so each rank replaces that global with
a function returning ``None`` (the code path DeepSpeed itself takes when the op is unavailable).
Note ``import deepspeed.comm.torch as m`` yields the *torch* package (``deepspeed.comm`` rebinds
the name ``torch``), so the module is taken from ``sys.modules``. fp16 is refused on this CPU
("Type fp16 is not supported on your device.": no mkldnn fp16), so ``DSConfig`` rejects it.

Facts worth knowing when using the output (see /work/notes/deepspeed.md):
- runs are bit-for-bit reproducible except the ZeRO-3 padding slots of the last rank's
  partitions (``fp32_flat_groups``, ``frozen_param_fragments``), which DeepSpeed leaves
  uninitialised: never compare raw bytes of stage-3 rank>0 files;
- stage 0 writes no ZeRO files, so DeepSpeed's zero_to_fp32 fails on it;
- zero_to_fp32's safetensors output fails for tied weights ("Some tensors share memory").
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SEED = 1234
MICRO_BATCH = 2
SEQ_LEN = 3
VOCAB = 13  # embedding / output rows
DIM = 7  # embedding width
HIDDEN = 11  # hidden width; every parameter numel is odd so ZeRO-3 pads across 2 ranks
RESULT_MARKER = "CKPTTUI_DS_RESULT "
DEFAULT_TIMEOUT = 900.0


@dataclass(frozen=True)
class DSConfig:
    """One DeepSpeed checkpoint to write: ZeRO stage, dtype, tag, client state, model variant."""

    name: str
    stage: int = 2
    dtype: str = "fp32"
    tag: str | None = None
    save_subdir: str | None = None
    client_state: dict[str, Any] = field(default_factory=dict, hash=False)
    frozen: bool = False
    tied: bool = False
    # Size knobs (benchmarks): the defaults give the tiny model, byte for byte. ``hidden`` widens
    # enc/dec; ``layers`` inserts that many Linear(hidden, hidden) as ``blocks`` between them.
    hidden: int = HIDDEN
    layers: int = 0

    def __post_init__(self) -> None:
        """Reject combinations DeepSpeed cannot run on this CPU."""
        if self.stage not in (0, 1, 2, 3):
            raise ValueError(f"{self.name}: ZeRO stage must be 0..3, not {self.stage!r}")
        if self.dtype == "fp16":
            raise ValueError(
                f"{self.name}: fp16 is refused by DeepSpeed's CPU accelerator "
                "('Type fp16 is not supported on your device.'); use bf16"
            )
        if self.dtype not in ("fp32", "bf16"):
            raise ValueError(f"{self.name}: dtype must be 'fp32' or 'bf16', not {self.dtype!r}")
        if self.hidden < 1 or self.layers < 0:
            raise ValueError(f"{self.name}: need hidden >= 1 and layers >= 0")
        json.dumps(self.client_state)  # plain data only

    def tag_for(self, steps: int) -> str:
        """The tag directory name DeepSpeed will use after ``steps`` optimizer steps."""
        return self.tag if self.tag is not None else f"global_step{steps}"

    @property
    def subdir(self) -> str:
        """Directory (relative to the output root) passed to ``engine.save_checkpoint``."""
        return self.save_subdir or self.name

    def to_json(self) -> dict[str, Any]:
        """Plain-data form for the command line."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DSConfig:
        """Inverse of ``to_json``."""
        return cls(**data)


# --------------------------------------------------------------------------- launching


def _src_root() -> Path:
    """Directory holding the ``ckpttui`` package (src/ in a checkout), from this file's location."""
    return Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for child processes: CPU accelerator, offline, ckpttui importable."""
    env = dict(os.environ)
    src = str(_src_root())
    env["PYTHONPATH"] = os.pathsep.join([src] + [p for p in [env.get("PYTHONPATH")] if p])
    env.update(
        DS_ACCELERATOR="cpu",
        CUDA_VISIBLE_DEVICES="",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        DO_NOT_TRACK="1",
        WANDB_MODE="disabled",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONHASHSEED="0",
        PYTHONUNBUFFERED="1",
    )
    if extra:
        env.update(extra)
    return env


def run_child(
    args: list[str], timeout: float, module: str = __name__, env: Mapping[str, str] | None = None
) -> str:
    """Run ``python -m MODULE ARGS`` (default: this module); return the result payload or raise."""
    cmd = [sys.executable, "-m", module, *args]
    proc = subprocess.run(
        cmd,
        env=dict(env) if env is not None else child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    payload = None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            payload = line[len(RESULT_MARKER) :]
    if proc.returncode != 0 or payload is None:
        tail = "\n".join((proc.stdout + "\n" + proc.stderr).splitlines()[-60:])
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {proc.returncode}:\n{tail}")
    return payload


def write_deepspeed_checkpoints(
    out_root: Path,
    configs: list[DSConfig],
    world_size: int = 1,
    steps: int = 2,
    timeout: float = DEFAULT_TIMEOUT,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Train a tiny model with a real DeepSpeed engine and save one checkpoint per config."""
    out_root = Path(out_root).resolve()
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ValueError(f"config names must be unique: {names}")
    dirs = [c.subdir for c in configs]
    if len(set(dirs)) != len(dirs):
        raise ValueError(f"save_subdir values must be unique: {dirs}")
    if world_size < 1:
        raise ValueError("world_size must be >= 1")
    out_root.mkdir(parents=True, exist_ok=True)
    _check_targets(out_root, configs, steps, overwrite)
    payload = run_child(
        [
            "--out",
            str(out_root),
            "--world-size",
            str(world_size),
            "--steps",
            str(steps),
            "--configs-json",
            json.dumps([c.to_json() for c in configs]),
        ],
        timeout,
    )
    result = json.loads(payload)
    return {name: Path(path) for name, path in result["save_dirs"].items()}


def _check_targets(out_root: Path, configs: list[DSConfig], steps: int, overwrite: bool) -> None:
    """Refuse (or with overwrite remove) existing tag dirs: stale rank files would corrupt them."""
    import shutil

    for cfg in configs:
        tag_dir = out_root / cfg.subdir / cfg.tag_for(steps)
        if tag_dir.exists():
            if not overwrite:
                raise FileExistsError(f"{tag_dir} exists; pass overwrite=True to replace it")
            shutil.rmtree(tag_dir)


# --------------------------------------------------------------------------- inside the ranks


def _build_model(cfg: DSConfig) -> Any:
    """The tiny model: embedding (optionally tied to the output layer), linears, a buffer.

    ``cfg.hidden`` / ``cfg.layers`` scale it up (``blocks``: a stack of Linear(hidden, hidden)
    between ``enc`` and ``dec``); at their defaults the model is the tiny one, unchanged.
    """
    import torch
    from torch import nn

    hidden = cfg.hidden

    class TinyNet(nn.Module):
        running_mean: torch.Tensor
        num_batches: torch.Tensor

        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(VOCAB, DIM)  # 91
            self.enc = nn.Linear(DIM, hidden)  # 77 + 11
            if cfg.layers:
                self.blocks = nn.Sequential(*[nn.Linear(hidden, hidden) for _ in range(cfg.layers)])
            self.dec = nn.Linear(hidden, DIM)  # 77 + 7
            self.head = nn.Linear(DIM, VOCAB)  # 91 + 13
            self.register_buffer("running_mean", torch.zeros(hidden))
            self.register_buffer("num_batches", torch.zeros((), dtype=torch.long))
            self.register_buffer("scratch", torch.zeros(3), persistent=False)
            if cfg.tied:
                self.head.weight = self.embed.weight
            if cfg.frozen:
                self.enc.weight.requires_grad_(False)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            h = torch.tanh(self.enc(self.embed(ids)))
            if cfg.layers:
                h = self.blocks(h)
            if self.training:
                with torch.no_grad():
                    mean = h.detach().reshape(-1, hidden).mean(0).to(self.running_mean.dtype)
                    self.running_mean.mul_(0.9).add_(0.1 * mean)
                    self.num_batches.add_(1)
            return self.head(self.dec(h))

    torch.manual_seed(SEED)
    return TinyNet()


def _ds_config(cfg: DSConfig, world_size: int) -> dict[str, Any]:
    """DeepSpeed JSON config for one DSConfig."""
    conf: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": MICRO_BATCH,
        "gradient_accumulation_steps": 1,
        "train_batch_size": MICRO_BATCH * world_size,
        "zero_optimization": {"stage": cfg.stage},
        "gradient_clipping": 1.0,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if cfg.dtype == "bf16":
        conf["bf16"] = {"enabled": True}
    return conf


def _patch_deepspeed() -> None:
    """Stop DeepSpeed's CPU comm backend from JIT-compiling its shm op (gloo is enough)."""
    import importlib

    ds_comm_torch: Any = importlib.import_module("deepspeed.comm.torch")
    if not hasattr(ds_comm_torch, "build_shm_op"):
        raise RuntimeError("deepspeed.comm.torch.build_shm_op not found: update _patch_deepspeed")
    ds_comm_torch.build_shm_op = lambda: None


def _rank_main(
    local_rank: int, world_size: int, out_root: str, configs: list[dict], steps: int
) -> None:
    """Body of one rank: for each config initialise an engine, train a few steps, save."""
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world_size))
    os.environ.update(LOCAL_WORLD_SIZE=str(world_size), CROSS_RANK="0", CROSS_SIZE="1")
    import logging

    import torch

    torch.set_num_threads(1)
    import deepspeed
    from deepspeed.utils import logger as ds_logger

    ds_logger.setLevel(logging.WARNING)
    _patch_deepspeed()
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    for raw in configs:
        cfg = DSConfig.from_json(raw)
        t0 = time.perf_counter()
        try:
            model = _build_model(cfg)
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.01)
            engine, _, _, _ = deepspeed.initialize(
                model=model, optimizer=optimizer, config=_ds_config(cfg, world_size)
            )
            gen = torch.Generator().manual_seed(SEED * 100 + local_rank)
            for _ in range(steps):
                ids = torch.randint(0, VOCAB, (MICRO_BATCH, SEQ_LEN), generator=gen)
                target = torch.randint(0, VOCAB, (MICRO_BATCH, SEQ_LEN), generator=gen)
                logits = engine(ids)
                loss = torch.nn.functional.cross_entropy(
                    logits.float().reshape(-1, VOCAB), target.reshape(-1)
                )
                engine.backward(loss)
                engine.step()
            save_dir = os.path.join(out_root, cfg.subdir)
            engine.save_checkpoint(save_dir, tag=cfg.tag, client_state=dict(cfg.client_state))
            engine.destroy()
            del engine, optimizer, model, params
        except Exception as exc:
            raise RuntimeError(f"rank {local_rank}: config {cfg.name!r} failed: {exc!r}") from exc
        if local_rank == 0:
            took = time.perf_counter() - t0
            print(f"[ds_writer] {cfg.name}: {took:.2f}s", file=sys.stderr, flush=True)


def _train_cli(
    out_root: Path, world_size: int, configs: list[DSConfig], steps: int
) -> dict[str, Any]:
    """Run all configs in ``world_size`` ranks (this process if one rank, else spawned ones)."""
    os.environ.update(child_env({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}))
    raw = [c.to_json() for c in configs]
    t0 = time.perf_counter()
    if world_size == 1:
        _rank_main(0, 1, str(out_root), raw, steps)
    else:
        import torch.multiprocessing as mp

        # Refer to the function through the importable module, not ``__main__``.
        from ckpttui.demo import ds_writer

        mp.start_processes(
            ds_writer._rank_main,
            args=(world_size, str(out_root), raw, steps),
            nprocs=world_size,
            join=True,
            start_method="spawn",
        )
    return {
        "save_dirs": {c.name: str(out_root / c.subdir) for c in configs},
        "seconds": round(time.perf_counter() - t0, 3),
        "world_size": world_size,
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: train every config of ``--configs-json`` in ``--world-size`` ranks."""
    ap = argparse.ArgumentParser(
        prog="python -m ckpttui.demo.ds_writer", description=(__doc__ or "").split("\n")[0]
    )
    ap.add_argument("--out", type=Path, required=True, help="output root")
    ap.add_argument("--world-size", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--configs-json", required=True, help="JSON list of DSConfig fields")
    ap.add_argument("--overwrite", action="store_true", help="replace existing tag directories")
    ns = ap.parse_args(argv)
    os.environ.update(child_env())
    configs = [DSConfig.from_json(d) for d in json.loads(ns.configs_json)]
    ns.out.mkdir(parents=True, exist_ok=True)
    _check_targets(ns.out.resolve(), configs, ns.steps, ns.overwrite)
    result = _train_cli(ns.out.resolve(), ns.world_size, configs, ns.steps)
    print(RESULT_MARKER + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
