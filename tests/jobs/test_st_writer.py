"""The streaming safetensors writer: output loads with safetensors itself and equals the input."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ckpttui.jobs.events import JobError
from ckpttui.jobs.st_writer import (
    INDEX_NAME,
    SafetensorsWriter,
    ShardedWriter,
    TensorSpec,
    header_bytes,
    plan_shards,
)


def tensors() -> dict[str, torch.Tensor]:
    """A mix of dtypes, a 0-d tensor, an empty one and non-contiguous input."""
    gen = torch.Generator().manual_seed(3)
    return {
        "w": torch.randn(4, 3, generator=gen).t(),  # non-contiguous: written contiguous
        "bf": torch.randn(5, generator=gen).bfloat16(),
        "h": torch.randn(2, 2, generator=gen).half(),
        "d": torch.randn(3, generator=gen, dtype=torch.float64),
        "n": torch.tensor(42, dtype=torch.int64),
        "m": torch.tensor([True, False]),
        "u": torch.arange(7, dtype=torch.uint8),
        "e": torch.zeros(0, 3),
    }


def specs_of(values: dict[str, torch.Tensor]) -> list[TensorSpec]:
    """Specs in dict order."""
    return [
        TensorSpec(k, str(v.dtype).removeprefix("torch."), tuple(v.shape))
        for k, v in values.items()
    ]


def test_single_file_round_trip(tmp_path: Path) -> None:
    values = tensors()
    path = tmp_path / "x.safetensors"
    with open(path, "wb") as f:
        writer = SafetensorsWriter(f, specs_of(values), {"format": "pt", "k": "v"})
        for name, value in values.items():
            writer.write(name, value)
        digest = writer.finish()
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = load_file(path)
    assert set(loaded) == set(values)
    for name, value in values.items():
        assert loaded[name].dtype == value.dtype and torch.equal(loaded[name], value), name
    with safe_open(path, framework="pt") as f:
        assert f.metadata() == {"format": "pt", "k": "v"}
    assert int.from_bytes(path.read_bytes()[:8], "little") % 8 == 0


def test_order_and_shape_are_checked() -> None:
    values = tensors()
    writer = SafetensorsWriter(io.BytesIO(), specs_of(values))
    with pytest.raises(JobError, match="expected 'w'"):
        writer.write("bf", values["bf"])
    writer.write("w", values["w"])
    with pytest.raises(JobError, match=r"expected 'bf' bfloat16\[5\], got 'bf' float32\[5\]"):
        writer.write("bf", values["bf"].float())
    with pytest.raises(JobError, match="never written"):
        writer.finish()


def test_header_refuses_duplicates_and_unknown_dtypes() -> None:
    with pytest.raises(JobError, match="twice"):
        header_bytes([TensorSpec("a", "float32", (1,)), TensorSpec("a", "float32", (1,))])
    with pytest.raises(JobError, match="no dtype"):
        header_bytes([TensorSpec("q", "qint8", (1,))])


def test_plan_shards_like_transformers() -> None:
    specs = [TensorSpec(f"t{i}", "float32", (n,)) for i, n in enumerate([100, 100, 300, 50, 10])]
    groups = plan_shards(specs, 800)  # 400, 400, 1200 (alone), 200, 40 bytes
    assert [[s.name for s in g] for g in groups] == [["t0", "t1"], ["t2"], ["t3", "t4"]]
    assert plan_shards([], 10) == [[]]


def test_sharded_round_trip(tmp_path: Path) -> None:
    values = tensors()
    writer = ShardedWriter(tmp_path, specs_of(values), max_shard_size=40)
    for name, value in values.items():
        writer.write(name, value)
    hashes = writer.finish()
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    files = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert set(hashes) == set(files) | {INDEX_NAME}
    assert files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    assert set(index["weight_map"]) == set(values)
    total = sum(v.numel() * v.element_size() for v in values.values())
    assert index["metadata"]["total_size"] == total
    merged: dict[str, torch.Tensor] = {}
    for name in files:
        part = load_file(tmp_path / name)
        assert all(index["weight_map"][k] == name for k in part)
        merged.update(part)
    assert all(torch.equal(merged[k], v) for k, v in values.items())


def test_one_shard_is_model_safetensors(tmp_path: Path) -> None:
    values = tensors()
    writer = ShardedWriter(tmp_path, specs_of(values), max_shard_size=10**9)
    for name, value in values.items():
        writer.write(name, value)
    assert set(writer.finish()) == {"model.safetensors"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
