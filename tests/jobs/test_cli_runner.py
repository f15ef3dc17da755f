"""The job commands and the child-process runner, end to end on real checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import run_cli

from ckpttui.jobs.atomic import sha256_file
from ckpttui.jobs.runner import ChildJob, JobSpec


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or p.name.endswith(".lock"))


def test_cli_merge_writes_a_verified_file(ds_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.safetensors"
    proc = run_cli("merge", str(ds_root / "ws2" / "z3_bf16_frozen_tied"), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "verified:" in proc.stderr and sha256_file(out) in proc.stderr.replace("\n", "")
    import torch
    from safetensors.torch import load_file

    merged = load_file(out)
    # a bf16 run: every float comes out fp32, the frozen enc.weight included (upcast, exact)
    assert merged["enc.weight"].dtype == torch.float32
    assert all(t.dtype == torch.float32 for t in merged.values() if t.is_floating_point())


def test_cli_json_events(ds_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.pt"
    proc = run_cli("merge", str(ds_root / "ws1" / "z2_fp32"), "-o", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events[0]["kind"] == "start" and events[-1]["kind"] == "done"
    assert events[-1]["data"] and out.exists()


def test_cli_missing_rank_fails_with_one_line(ds_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(ds_root / "ws2" / "z2_fp32", run)
    (run / "global_step2" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    out = tmp_path / "out.safetensors"
    proc = run_cli("merge", str(run), "-o", str(out))
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "zero_pp_rank_1" in lines[0] and "Traceback" not in proc.stderr
    assert not out.exists() and _leftovers(tmp_path) == []


def test_cli_usage_errors_exit_2(tmp_path: Path) -> None:
    assert run_cli("merge", str(tmp_path)).returncode == 2  # no -o
    assert run_cli("export", str(tmp_path), "-o", "x.safetensors", "--dtype", "fp8").returncode == 2
    proc = run_cli("average", str(tmp_path / "a.pt"), "-o", str(tmp_path / "b.pt"))
    assert proc.returncode == 2 and "at least two" in proc.stderr


@pytest.fixture(scope="module")
def big_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An HF sharded safetensors folder of ~400 MB, so a job takes long enough to cancel."""
    import torch
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("big") / "model"
    folder.mkdir()
    weight_map = {}
    for i in range(4):
        name = f"model-{i + 1:05d}-of-00004.safetensors"
        tensors = {
            f"layer{i}.{j}.weight": torch.full((1024, 1024), float(i + j)) for j in range(25)
        }
        save_file(tensors, folder / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in tensors})
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 4 * 25 * 4 * 2**20}, "weight_map": weight_map})
    )
    return folder


def test_child_job_streams_and_cancels_leaving_nothing(big_shards: Path, tmp_path: Path) -> None:
    before = {p.name: sha256_file(p) for p in big_shards.iterdir()}
    out = tmp_path / "merged.safetensors"
    job = ChildJob(JobSpec("merge", {"src": str(big_shards), "out": str(out)}))
    kinds = []
    for event in job.events():
        kinds.append(event.kind)
        if event.kind == "progress" and 0 < event.bytes_done < event.bytes_total:
            job.cancel()
    assert "progress" in kinds and kinds[-1] == "error"
    assert not out.exists() and _leftovers(tmp_path) == []
    assert {p.name: sha256_file(p) for p in big_shards.iterdir()} == before


def test_child_job_done(big_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "merged.safetensors"
    events = list(ChildJob(JobSpec("merge", {"src": str(big_shards), "out": str(out)})).events())
    assert [e.kind for e in events][0] == "start" and events[-1].kind == "done", events[-1].message
    done = events[-1]
    assert done.data["tensors"] == 100 and done.data["tensor_bytes"] == 100 * 4 * 2**20
    assert done.data["sha256"] == {out.name: sha256_file(out)} and _leftovers(tmp_path) == []
    # Every tensor of the four shards, by name, with its values (shard i, tensor j: all i + j).
    from safetensors import safe_open

    index = json.loads((big_shards / "model.safetensors.index.json").read_text())
    with safe_open(str(out), "pt") as merged:
        assert sorted(merged.keys()) == sorted(index["weight_map"])
        for i, j in ((0, 0), (1, 7), (3, 24)):
            t = merged.get_tensor(f"layer{i}.{j}.weight")
            assert tuple(t.shape) == (1024, 1024) and float(t.min()) == float(t.max()) == i + j


def test_cli_average_last_n_and_export(tk_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "exp"
    run.mkdir()
    for name in ("model.pt.ep1", "model.pt.ep2", "model.pt.ep3", "model.pt"):
        shutil.copy(tk_root / "funasr" / name, run / name)
    avg = tmp_path / "model.pt.avg2"
    proc = run_cli("average", str(run), "--last", "2", "-o", str(avg))
    assert proc.returncode == 0, proc.stderr
    assert "last 2" in proc.stderr and "verified:" in proc.stderr
    import torch

    state = torch.load(avg, weights_only=True)
    assert set(state) == {"state_dict"}  # FunASR's own model.pt.avgN layout
    out = tmp_path / "weights.safetensors"
    proc = run_cli("export", str(run / "model.pt.ep3"), "-o", str(out), "--dtype", "fp16")
    assert proc.returncode == 0, proc.stderr
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(out).values() if t.is_floating_point()} == {torch.float16}
    assert out.stat().st_size < (run / "model.pt.ep3").stat().st_size / 4
