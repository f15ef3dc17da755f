"""Fixtures for job tests: DeepSpeed's own consolidation of every ZeRO fixture, in ONE subprocess.

DeepSpeed must not initialise in the pytest process, so a child runs
``get_fp32_state_dict_from_zero_checkpoint`` on every stage 1-3 checkpoint under ``ds_root`` and
``torch.save``s each result (or records its error), and writes DeepSpeed's sharded outputs
(``convert_zero_checkpoint_to_fp32_state_dict``, safetensors and .bin, 1KB shards) of two
checkpoints, which serve as real HF sharded folders.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fixtures.ds_writers import default_configs

ZERO_CONFIGS = [c for c in default_configs() if c.stage > 0]
SHARDED_SAFETENSORS_FROM = "z3_fp32"  # DeepSpeed cannot write tied weights as safetensors
SHARDED_BIN_FROM = "z2_fp32_frozen_tied"
FP16_FROM = ["z1_bf16_frozen_tied", "z2_bf16_frozen_tied", "z3_bf16_frozen_tied"]

_SCRIPT = r"""
import json, sys, traceback
import torch
from deepspeed.utils.zero_to_fp32 import (convert_zero_checkpoint_to_fp32_state_dict,
                                          get_fp32_state_dict_from_zero_checkpoint)
jobs = json.loads(sys.argv[1])
result = {}
for key, save_dir, out in jobs["refs"]:
    try:
        sd = get_fp32_state_dict_from_zero_checkpoint(save_dir)
        torch.save(sd, out)
        result[key] = {"ok": True, "path": out}
    except Exception as exc:
        result[key] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
for save_dir, out, safe in jobs["sharded"]:
    convert_zero_checkpoint_to_fp32_state_dict(save_dir, out, max_shard_size="1KB",
                                               safe_serialization=safe)
print("CKPTTUI_REF " + json.dumps(result))
"""


def make_fp16_variant(save_dir: Path, dest: Path) -> Path:
    """A bf16 ZeRO checkpoint rewritten as an fp16 run saves it (fp16 cannot train on this CPU).

    Model states: every bf16 tensor becomes fp16 and ``ds_config`` enables fp16; optimizer files
    (fp32 masters either way) lose the ``bf16_`` prefix, as DeepSpeed names fp16 runs' files.
    """
    import torch

    shutil.copytree(save_dir, dest)
    tag = dest / (dest / "latest").read_text().strip()
    for path in sorted(tag.iterdir()):
        if path.name.endswith("_optim_states.pt"):
            path.rename(tag / path.name.removeprefix("bf16_"))
        elif path.name.endswith("_model_states.pt"):
            state = torch.load(path, weights_only=True)
            convert = lambda t: t.half() if t.dtype == torch.bfloat16 else t  # noqa: E731
            state["module"] = type(state["module"])(
                (k, convert(v)) for k, v in state["module"].items()
            )
            if state.get("frozen_param_fragments"):
                state["frozen_param_fragments"] = {
                    k: convert(v) for k, v in state["frozen_param_fragments"].items()
                }
            config = dict(state["ds_config"])
            config.pop("bf16", None)
            config["fp16"] = {"enabled": True}
            state["ds_config"] = config
            torch.save(state, path)
    return dest


@pytest.fixture(scope="session")
def ds_reference(ds_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``{"ws1/z2_fp32": DeepSpeed's state dict .pt, "hf_bin": folder, "hf_bin_from": name...}``."""
    from ckpttui.demo.ds_writer import child_env

    out = tmp_path_factory.mktemp("ds_ref")
    refs = []
    for ws in (1, 2):
        for cfg in ZERO_CONFIGS:
            key = f"ws{ws}/{cfg.name}"
            refs.append(
                [
                    key,
                    str(ds_root / f"ws{ws}" / cfg.subdir),
                    str(out / (key.replace("/", "_") + ".pt")),
                ]
            )
    for name in FP16_FROM:
        key = f"fp16/{name.replace('bf16', 'fp16')}"
        variant = make_fp16_variant(ds_root / "ws2" / name, out / key)
        refs.append([key, str(variant), str(out / (key.replace("/", "_") + ".pt"))])
    sharded = [
        [str(ds_root / "ws2" / SHARDED_SAFETENSORS_FROM), str(out / "hf_safetensors"), True],
        [str(ds_root / "ws2" / SHARDED_BIN_FROM), str(out / "hf_bin"), False],
    ]
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps({"refs": refs, "sharded": sharded})],
        check=False,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("CKPTTUI_REF ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"reference subprocess failed ({proc.returncode}):\n"
            + "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        )
    result: dict[str, Any] = json.loads(lines[-1][len("CKPTTUI_REF ") :])
    for entry in result.values():
        if not entry["ok"]:
            raise RuntimeError(f"DeepSpeed's zero_to_fp32 failed: {entry['error']}")
    refs_out: dict[str, Any] = {k: Path(v["path"]) for k, v in result.items()}
    for name in FP16_FROM:
        key = f"fp16/{name.replace('bf16', 'fp16')}"
        refs_out[key + "/src"] = out / key
    refs_out["hf_safetensors"] = out / "hf_safetensors"
    refs_out["hf_safetensors_from"] = SHARDED_SAFETENSORS_FROM
    refs_out["hf_bin"] = out / "hf_bin"
    refs_out["hf_bin_from"] = SHARDED_BIN_FROM
    return refs_out
