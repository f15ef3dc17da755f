"""merge_zero against DeepSpeed's own zero_to_fp32 on real ZeRO 1/2/3 checkpoints, 1 and 2 ranks."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from fixtures.ds_writers import default_configs
from safetensors.torch import load_file

from ckpttui.formats import read_file
from ckpttui.jobs import output
from ckpttui.jobs.events import Event, JobCancelled, JobError, ProgressClock
from ckpttui.jobs.merge import merge_zero

ZERO_CONFIGS = [c for c in default_configs() if c.stage > 0]

CASES = [pytest.param(ws, cfg, id=f"ws{ws}-{cfg.name}") for ws in (1, 2) for cfg in ZERO_CONFIGS]


def bits(t: torch.Tensor) -> torch.Tensor:
    """A tensor's raw bytes, so NaN payloads and -0.0 compare exactly."""
    flat = t.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8) if flat.numel() else flat


def identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bytes."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))


def run(events: Any) -> list[Event]:
    """Drain a job; return its events."""
    return list(events)


def written_order(path: Path) -> list[str]:
    """Tensor names of a safetensors file in the order their bytes are laid out."""
    return [t.name for t in read_file(path).tensors]


def save_dir(ds_root: Path, ws: int, cfg: Any) -> Path:
    """The folder DeepSpeed saved a config into (holds ``latest``)."""
    return ds_root / f"ws{ws}" / cfg.subdir


def module_state(folder: Path) -> dict[str, torch.Tensor]:
    """Rank 0's ``module`` from the model states (plain torch globals: weights_only works)."""
    tag = (folder / "latest").read_text().strip()
    files = sorted((folder / tag).glob("*model_states.pt"))
    return torch.load(files[0], weights_only=True, map_location="cpu")["module"]


@pytest.mark.parametrize(("ws", "cfg"), CASES)
def test_compat_equals_deepspeed_bit_for_bit(
    ds_root: Path, ds_reference: dict[str, Any], tmp_path: Path, ws: int, cfg: Any
) -> None:
    ref = torch.load(ds_reference[f"ws{ws}/{cfg.name}"], weights_only=True)
    src = save_dir(ds_root, ws, cfg)
    events = run(merge_zero(src, tmp_path / "m.safetensors", compat=True))
    assert events[0].kind == "start" and events[-1].kind == "done"
    assert written_order(tmp_path / "m.safetensors") == list(ref)
    ours = load_file(tmp_path / "m.safetensors")
    for key, value in ref.items():
        assert identical(ours[key], value), key

    run(merge_zero(src, tmp_path / "m.pt", compat=True))
    ours_pt = torch.load(tmp_path / "m.pt", weights_only=True)
    assert list(ours_pt) == list(ref)
    for key, value in ref.items():
        assert identical(ours_pt[key], value), key
    if cfg.tied:
        assert ref["head.weight"] is ref["embed.weight"]
        assert ours_pt["head.weight"] is ours_pt["embed.weight"]
        assert not torch.equal(ours["head.weight"], torch.zeros_like(ours["head.weight"]))


@pytest.mark.parametrize(("ws", "cfg"), CASES)
def test_default_keeps_frozen_and_upcasts(
    ds_root: Path, ds_reference: dict[str, Any], tmp_path: Path, ws: int, cfg: Any
) -> None:
    ref = torch.load(ds_reference[f"ws{ws}/{cfg.name}"], weights_only=True)
    src = save_dir(ds_root, ws, cfg)
    out = tmp_path / "m.safetensors"
    events = run(merge_zero(src, out))
    ours = load_file(out)
    dropped = cfg.frozen and cfg.stage == 1
    assert ("enc.weight" in ref) is not dropped  # deepspeed#5439
    expected_keys = list(ref)
    if dropped:
        # ckpttui keeps it where ZeRO-2 would put it: after the buffers, before trainables
        buffers = [k for k in ref if k in ("running_mean", "num_batches")]
        expected_keys = buffers + ["enc.weight"] + [k for k in ref if k not in buffers]
        module = module_state(src)
        assert identical(ours["enc.weight"], module["enc.weight"].float())
        assert any("deepspeed#5439" in e.message for e in events if e.kind == "log")
    assert written_order(out) == expected_keys
    for key, value in ref.items():
        if cfg.frozen and key == "enc.weight" and cfg.dtype == "bf16":
            assert value.dtype == torch.bfloat16  # DeepSpeed's result
            assert ours[key].dtype == torch.float32
            assert identical(ours[key], value.float())
        else:
            assert identical(ours[key], value), key
    assert all(v.dtype in (torch.float32, torch.int64) for v in ours.values())


@pytest.mark.parametrize(
    "name", ["z1_fp16_frozen_tied", "z2_fp16_frozen_tied", "z3_fp16_frozen_tied"]
)
def test_fp16_checkpoints(ds_reference: dict[str, Any], tmp_path: Path, name: str) -> None:
    """fp16 runs (bf16 ones rewritten as fp16 ones are saved: this CPU cannot train in fp16)."""
    src = ds_reference[f"fp16/{name}/src"]
    assert not list(src.rglob("bf16_*"))
    ref = torch.load(ds_reference[f"fp16/{name}"], weights_only=True)
    run(merge_zero(src, tmp_path / "c.pt", compat=True))
    compat = torch.load(tmp_path / "c.pt", weights_only=True)
    assert list(compat) == list(ref)
    assert all(identical(compat[k], v) for k, v in ref.items())
    assert compat["head.weight"] is compat["embed.weight"]

    run(merge_zero(src, tmp_path / "d.safetensors"))
    ours = load_file(tmp_path / "d.safetensors")
    if name.startswith("z1"):
        assert "enc.weight" not in ref  # deepspeed#5439
        frozen = module_state(src)["enc.weight"]
    else:
        frozen = ref["enc.weight"]
    assert frozen.dtype == torch.float16
    assert identical(ours["enc.weight"], frozen.float())
    assert all(identical(ours[k], v) for k, v in ref.items() if k != "enc.weight")


@pytest.mark.parametrize(
    "cfg", [c for c in ZERO_CONFIGS if c.frozen and c.dtype == "bf16"], ids=lambda c: c.name
)
def test_keep_frozen_dtype_option(ds_root: Path, tmp_path: Path, cfg: Any) -> None:
    out = tmp_path / "m.safetensors"
    run(merge_zero(save_dir(ds_root, 2, cfg), out, upcast_frozen=False))
    assert load_file(out)["enc.weight"].dtype == torch.bfloat16


def test_exclude_frozen(ds_root: Path, tmp_path: Path) -> None:
    cfg = next(c for c in ZERO_CONFIGS if c.name == "z1_fp32_frozen_tied")
    out = tmp_path / "m.safetensors"
    run(merge_zero(save_dir(ds_root, 2, cfg), out, exclude_frozen=True))
    assert "enc.weight" not in load_file(out)


def test_tag_argument_and_metadata(
    ds_root: Path, ds_reference: dict[str, Any], tmp_path: Path
) -> None:
    cfg = next(c for c in ZERO_CONFIGS if c.name == "z3_fp32_frozen_tied")
    src = save_dir(ds_root, 2, cfg)
    out = tmp_path / "m.safetensors"
    events = run(merge_zero(src, out, tag="global_step2"))
    start = events[0].data
    assert start["zero_stage"] == 3 and start["world_size"] == 2 and start["tag"] == "global_step2"
    meta = read_file(out).metadata["__metadata__"]
    assert meta["format"] == "pt" and '"head.weight":"embed.weight"' in meta["ckpttui.aliases"]
    # the tag folder itself is accepted too
    run(merge_zero(src / "global_step2", tmp_path / "n.safetensors"))
    assert (
        hashlib.sha256(out.read_bytes()).digest()
        == hashlib.sha256((tmp_path / "n.safetensors").read_bytes()).digest()
    )
    with pytest.raises(JobError, match="global_step9"):
        run(merge_zero(src, tmp_path / "x.safetensors", tag="global_step9"))


def test_done_event_is_the_verification(ds_root: Path, tmp_path: Path) -> None:
    cfg = ZERO_CONFIGS[0]
    out = tmp_path / "m.safetensors"
    done = run(merge_zero(save_dir(ds_root, 1, cfg), out))[-1]
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert done.data["sha256"] == {"m.safetensors": digest}
    assert done.data["bytes"] == out.stat().st_size
    assert done.message == (
        f"verified: {done.data['tensors']} tensors, {out.stat().st_size} "
        f"bytes, sha256 m.safetensors {digest}"
    )
    assert done.bytes_done == done.bytes_total > 0


def test_sharded_output(ds_root: Path, ds_reference: dict[str, Any], tmp_path: Path) -> None:
    cfg = next(c for c in ZERO_CONFIGS if c.name == "z2_bf16_frozen_tied")
    ref = torch.load(ds_reference[f"ws2/{cfg.name}"], weights_only=True)
    out = tmp_path / "model"
    done = run(merge_zero(save_dir(ds_root, 2, cfg), out, max_shard_size="1KB", compat=True))[-1]
    files = sorted(p.name for p in out.iterdir())
    assert "model.safetensors.index.json" in files and len(files) > 2
    assert set(done.data["sha256"]) == set(files)
    merged: dict[str, torch.Tensor] = {}
    for name in files:
        if name.endswith(".safetensors"):
            merged.update(load_file(out / name))
    assert set(merged) == set(ref)
    assert all(identical(merged[k], v) for k, v in ref.items())


def _tag_copy(ds_root: Path, tmp_path: Path, name: str, ws: int = 2) -> Path:
    cfg = next(c for c in ZERO_CONFIGS if c.name == name)
    copy = tmp_path / "ckpt"
    shutil.copytree(save_dir(ds_root, ws, cfg), copy)
    return copy


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(
    ("name", "victim"),
    [
        ("z2_fp32", "zero_pp_rank_1_mp_rank_00_optim_states.pt"),
        ("z3_bf16", "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"),
        ("z3_fp32", "zero_pp_rank_1_mp_rank_00_model_states.pt"),
        ("z1_fp32", "mp_rank_00_model_states.pt"),
    ],
)
def test_missing_rank_file_is_named(ds_root: Path, tmp_path: Path, name: str, victim: str) -> None:
    src = _tag_copy(ds_root, tmp_path, name)
    (src / "global_step2" / victim).unlink()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(JobError, match=victim):
        run(merge_zero(src, out_dir / "m.safetensors"))
    assert list(out_dir.iterdir()) == []


def test_surplus_rank_file_is_named(ds_root: Path, tmp_path: Path) -> None:
    src = _tag_copy(ds_root, tmp_path, "z2_fp32")
    tag = src / "global_step2"
    shutil.copy(
        tag / "zero_pp_rank_1_mp_rank_00_optim_states.pt",
        tag / "zero_pp_rank_2_mp_rank_00_optim_states.pt",
    )
    with pytest.raises(JobError, match=r"zero_pp_rank_2_mp_rank_00_optim_states\.pt"):
        run(merge_zero(src, tmp_path / "m.safetensors"))


class CancelAfter(threading.Event):
    """A cancel flag that turns itself on after `n` checks, noting the folder at that moment."""

    def __init__(self, n: int, folder: Path) -> None:
        super().__init__()
        self.n, self.folder = n, folder
        self.seen: list[str] = []

    def is_set(self) -> bool:
        self.n -= 1
        if self.n < 0:
            self.seen = sorted(p.name for p in self.folder.iterdir())
            return True
        return False


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ""])
def test_cancel_midway_leaves_nothing(ds_root: Path, tmp_path: Path, suffix: str) -> None:
    cfg = next(c for c in ZERO_CONFIGS if c.name == "z3_bf16_frozen_tied")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    cancel = CancelAfter(4, out_dir)
    with pytest.raises(JobCancelled):
        run(
            merge_zero(
                save_dir(ds_root, 2, cfg),
                out_dir / f"m{suffix}",
                cancel=cancel,
                max_shard_size=None if suffix else 300,
            )
        )
    assert [n for n in cancel.seen if ".tmp-" in n], "the job was cancelled before writing"
    assert list(out_dir.iterdir()) == []


def test_closing_the_generator_removes_the_temp_file(
    ds_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        output, "ProgressClock", lambda job, total: ProgressClock(job, total, interval=0.0)
    )
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    job = merge_zero(save_dir(ds_root, 1, ZERO_CONFIGS[0]), out_dir / "m.safetensors")
    for event in job:
        if event.kind == "progress":
            break
    assert [p.name for p in out_dir.iterdir() if ".tmp-" in p.name]
    job.close()  # what a consumer that stops iterating does
    assert list(out_dir.iterdir()) == []


def test_refuses_to_overwrite_an_input(ds_root: Path, tmp_path: Path) -> None:
    src = _tag_copy(ds_root, tmp_path, "z2_fp32")
    before = _hashes(src)
    victim = src / "global_step2" / "mp_rank_00_model_states.pt"
    with pytest.raises(JobError, match="refusing to overwrite an input"):
        run(merge_zero(src, victim, force=True))
    for folder in (src, src / "global_step2"):  # a folder output would replace the inputs
        with pytest.raises(JobError, match="input"):
            run(merge_zero(src, folder, force=True, max_shard_size=1000))
    link = tmp_path / "same_inode.pt"
    os.link(victim, link)
    with pytest.raises(JobError, match="refusing to overwrite an input"):
        run(merge_zero(src / "global_step2", link, force=True))
    assert _hashes(src) == before


def test_inputs_unchanged_and_existing_output_needs_force(ds_root: Path, tmp_path: Path) -> None:
    src = _tag_copy(ds_root, tmp_path, "z3_bf16_frozen_tied")
    before = _hashes(src)
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"old")
    with pytest.raises(JobError, match="exists"):
        run(merge_zero(src, out))
    assert out.read_bytes() == b"old"
    run(merge_zero(src, out, force=True))
    assert len(load_file(out)) == 9
    assert _hashes(src) == before


def test_full_disk_is_refused_before_writing(
    ds_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    usage = shutil.disk_usage(out_dir)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=1000))
    with pytest.raises(JobError, match=r"not enough free space.*\(1000 bytes\) are free") as info:
        run(merge_zero(save_dir(ds_root, 1, ZERO_CONFIGS[0]), out_dir / "m.safetensors"))
    assert "m.safetensors" in str(info.value)
    assert list(out_dir.iterdir()) == []


def test_not_a_zero_checkpoint(ds_root: Path, tmp_path: Path) -> None:
    with pytest.raises(JobError, match="not a ZeRO 1/2/3 checkpoint"):
        run(merge_zero(ds_root / "ws1" / "z0_fp32", tmp_path / "m.safetensors"))
    with pytest.raises(JobError, match="latest"):
        run(merge_zero(tmp_path, tmp_path / "m.safetensors"))
