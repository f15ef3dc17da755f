"""merge_hf_shards on real HF sharded folders (DeepSpeed's convert, sharded by huggingface_hub)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from ckpttui.jobs.events import JobError
from ckpttui.jobs.merge import merge_hf_shards


def identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bytes."""
    fa, fb = a.contiguous().reshape(-1), b.contiguous().reshape(-1)
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(
            fa.view(torch.uint8) if fa.numel() else fa, fb.view(torch.uint8) if fb.numel() else fb
        )
    )


def reference(ds_reference: dict[str, Any], kind: str) -> dict[str, torch.Tensor]:
    """DeepSpeed's consolidated state dict of the checkpoint a sharded folder was made from."""
    return torch.load(ds_reference[f"ws2/{ds_reference[kind + '_from']}"], weights_only=True)


@pytest.mark.parametrize("kind", ["hf_safetensors", "hf_bin"])
def test_shards_to_one_safetensors(ds_reference: dict[str, Any], tmp_path: Path, kind: str) -> None:
    folder = ds_reference[kind]
    assert len([p for p in folder.iterdir() if p.suffix in (".bin", ".safetensors")]) > 1
    out = tmp_path / "one.safetensors"
    events = list(merge_hf_shards(folder, out))
    assert events[0].kind == "start" and events[-1].kind == "done"
    ref = reference(ds_reference, kind)
    ours = load_file(out)
    assert set(ours) == set(ref)
    for key, value in ref.items():
        assert identical(ours[key], value), key


def test_bin_shards_to_pt_keep_tied_weights(ds_reference: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "one.bin"
    list(merge_hf_shards(ds_reference["hf_bin"], out))
    ours = torch.load(out, weights_only=True)
    ref = reference(ds_reference, "hf_bin")
    assert set(ours) == set(ref)
    assert all(identical(ours[k], v) for k, v in ref.items())
    index = json.loads((ds_reference["hf_bin"] / "pytorch_model.bin.index.json").read_text())
    if index["weight_map"]["head.weight"] == index["weight_map"]["embed.weight"]:
        assert ours["head.weight"] is ours["embed.weight"]


def test_reshard(ds_reference: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "resharded"
    done = list(merge_hf_shards(ds_reference["hf_safetensors"], out, max_shard_size="600B"))[-1]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) >= 3 and set(index["weight_map"].values()) == set(shards)
    assert set(done.data["sha256"]) == set(shards) | {"model.safetensors.index.json"}
    merged: dict[str, torch.Tensor] = {}
    for name in shards:
        part = load_file(out / name)
        assert sum(v.numel() * v.element_size() for v in part.values()) <= 600 or len(part) == 1
        merged.update(part)
    ref = reference(ds_reference, "hf_safetensors")
    assert set(merged) == set(ref) and all(identical(merged[k], v) for k, v in ref.items())


def _copy(ds_reference: dict[str, Any], tmp_path: Path, kind: str = "hf_safetensors") -> Path:
    folder = tmp_path / "model"
    shutil.copytree(ds_reference[kind], folder)
    return folder


def test_missing_shard_is_named(ds_reference: dict[str, Any], tmp_path: Path) -> None:
    folder = _copy(ds_reference, tmp_path)
    victim = max(folder.glob("*.safetensors"))
    victim.unlink()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(JobError, match=victim.name):
        list(merge_hf_shards(folder, out_dir / "one.safetensors"))
    assert list(out_dir.iterdir()) == []


def test_index_naming_an_absent_tensor(ds_reference: dict[str, Any], tmp_path: Path) -> None:
    folder = _copy(ds_reference, tmp_path)
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = min(index["weight_map"].values())
    index["weight_map"]["ghost.weight"] = first
    index_path.write_text(json.dumps(index))
    with pytest.raises(JobError, match=f"{first}: has no tensor 'ghost.weight'"):
        list(merge_hf_shards(folder, tmp_path / "one.safetensors"))


def test_resharding_into_the_input_folder_is_refused(
    ds_reference: dict[str, Any], tmp_path: Path
) -> None:
    folder = _copy(ds_reference, tmp_path)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(JobError, match="input"):
        list(merge_hf_shards(folder, folder, max_shard_size="1KB", force=True))
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
