"""TensorSource against torch.load(weights_only=True): values, dtypes, shapes, strides, sharing."""

from __future__ import annotations

import hashlib
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from ckpttui.formats import read_file
from ckpttui.jobs.events import JobError
from ckpttui.jobs.source import TensorSource


def bits(t: torch.Tensor) -> torch.Tensor:
    """A tensor's raw bytes."""
    flat = t.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8) if flat.numel() else flat


def sample() -> dict[str, Any]:
    """Tensors of every kind a checkpoint holds: views, odd dtypes, 0-d, shared storage, nesting."""
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=gen)
    emb = torch.randn(4, 3, generator=gen)
    return {
        "model": OrderedDict(
            [
                ("w", base),
                ("w_t", base.t()),  # non-contiguous view
                ("w_rows", base[2:5]),  # offset view
                ("w_step", base[:, ::2]),  # strided view
                ("embed", emb),
                ("head", emb),  # tied: the same tensor
                ("bf16", torch.randn(7, generator=gen).to(torch.bfloat16)),
                ("fp16", torch.randn(2, 3, generator=gen).half()),
                ("f64", torch.randn(3, generator=gen, dtype=torch.float64)),
                ("step", torch.tensor(12345678901, dtype=torch.int64)),  # 0-d int64
                ("scale", torch.tensor(0.5)),  # 0-d float
                ("mask", torch.tensor([True, False, True])),
                ("i8", torch.tensor([-3, 4], dtype=torch.int8)),
                ("empty", torch.zeros(0, 4)),
                ("param", torch.nn.Parameter(torch.randn(2, 2, generator=gen))),
            ]
        ),
        "optimizer": {
            "state": {0: {"exp_avg": torch.randn(5, generator=gen)}},
            "param_groups": [{"lr": 0.1, "params": [0]}],
        },
        "history": [torch.arange(4), torch.arange(4).float() / 3],
    }


def lookup(obj: Any, path: tuple[str, ...]) -> Any:
    """Follow a record's key path through a torch.load result."""
    for key in path:
        if isinstance(obj, dict):
            obj = obj[key] if key in obj else {str(k): v for k, v in obj.items()}[key]
        else:
            obj = obj[int(key)]
    return obj


def check_against_torch(path: Path) -> int:
    """Every record of `path` equals torch.load's tensor; returns how many were compared."""
    expected = torch.load(path, weights_only=True, map_location="cpu")
    with TensorSource(path) as source:
        for rec in source.records:
            ours, theirs = source.tensor(rec), lookup(expected, rec.path)
            assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, rec.name
            if ours.numel() > 1:
                assert ours.stride() == theirs.stride(), rec.name
            assert torch.equal(bits(ours), bits(theirs)), rec.name
        return len(source.records)


@pytest.mark.parametrize("zipfile_format", [True, False], ids=["zip", "legacy"])
def test_torch_files_match_torch_load(tmp_path: Path, zipfile_format: bool) -> None:
    path = tmp_path / "sample.pt"
    torch.save(sample(), path, _use_new_zipfile_serialization=zipfile_format)
    assert read_file(path).format == ("torch-zip" if zipfile_format else "torch-legacy")
    assert check_against_torch(path) == 18


def test_shared_storage_shares_memory(tmp_path: Path) -> None:
    path = tmp_path / "sample.pt"
    torch.save(sample(), path)
    with TensorSource(path) as source:
        t = {r.name: source.tensor(r) for r in source.records}
        assert t["model/head"].data_ptr() == t["model/embed"].data_ptr()
        assert (
            t["model/w_rows"].untyped_storage().data_ptr()
            == t["model/w"].untyped_storage().data_ptr()
        )
        assert t["model/w_rows"].storage_offset() == 10


def test_in_place_writes_never_reach_the_file(tmp_path: Path) -> None:
    path = tmp_path / "sample.pt"
    torch.save(sample(), path)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with TensorSource(path) as source:
        source.tensor(source.walk("model", "w")[0]).add_(1.0)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_released_pages_are_read_again(tmp_path: Path) -> None:
    path = tmp_path / "big.pt"
    value = torch.arange(300_000, dtype=torch.float32)  # spans many pages
    torch.save({"v": value, "tail": value[-5:]}, path)
    with TensorSource(path) as source:
        view = source.tensor(source.walk("v")[0])
        assert float(view.sum()) == float(value.sum())
        source.release()
        assert torch.equal(view, value)  # the mapping faults the pages back in from the file
        assert torch.equal(source.tensor(source.walk("tail")[0]), value[-5:])
        source.release()


def test_read_after_close_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "sample.pt"
    torch.save(sample(), path)
    source = TensorSource(path)
    record = source.walk("model", "w")[0]
    source.close()
    with pytest.raises(JobError, match="closed"):
        source.tensor(record)


def test_walk_and_get(tmp_path: Path) -> None:
    path = tmp_path / "sample.pt"
    torch.save(sample(), path)
    with TensorSource(path) as source:
        assert [r.name for r in source.walk("optimizer")] == ["optimizer/state/0/exp_avg"]
        assert len(source.walk("history")) == 2
        assert source.get("optimizer", "param_groups", 0, "lr") == 0.1
        assert source.get("optimizer", "state", "0", "exp_avg").shape == (5,)
        assert source.get("nope", default=None) is None
        with pytest.raises(JobError, match=r"sample\.pt: no 'model/nope'"):
            source.get("model", "nope")


def test_safetensors_match(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    gen = torch.Generator().manual_seed(1)
    tensors = {
        "a": torch.randn(3, 4, generator=gen),
        "b": torch.randn(5, generator=gen).bfloat16(),
        "c": torch.tensor(7, dtype=torch.int64),
        "d": torch.zeros(0),
    }
    save_file(tensors, path)
    with TensorSource(path) as source:
        got = {r.name: source.tensor(r) for r in source.records}
    # tensors outlive the source: the mapping goes only when they do
    assert set(got) == set(tensors)
    for name, value in tensors.items():
        assert got[name].dtype == value.dtype and torch.equal(bits(got[name]), bits(value))


def test_deepspeed_model_states(ds_root: Path) -> None:
    """Stage-1 bf16 parameters are views into one flat storage; stage-3 ones are empty."""
    for name in ("z1_bf16_frozen_tied", "z3_bf16_frozen_tied"):
        for path in sorted((ds_root / "ws2" / name / "global_step2").glob("*model_states.pt")):
            assert check_against_torch(path) > 5


def _rewrite_zip(
    src: Path, dst: Path, compress: int = zipfile.ZIP_STORED, big_endian: bool = False
) -> None:
    """Copy a torch zip, optionally compressing entries or converting storages to big-endian."""
    index = read_file(src)
    root = index.metadata["root"]
    sizes = {r.storage: r.dtype for r in index.tensors}
    elsize = {k: torch.empty(0, dtype=getattr(torch, d)).element_size() for k, d in sizes.items()}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression=compress) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            name = info.filename
            if big_endian and name == f"{root}/byteorder":
                data = b"big"
            elif big_endian and name.startswith(f"{root}/data/"):
                n = elsize.get(name[len(root) + 6 :], 1)
                data = (
                    bytes(
                        torch.frombuffer(bytearray(data), dtype=torch.uint8)
                        .view(-1, n)
                        .flip(1)
                        .contiguous()
                        .view(-1)
                        .tolist()
                    )
                    if data
                    else data
                )
            zout.writestr(name, data)


def test_big_endian_file_is_swapped(tmp_path: Path) -> None:
    little = tmp_path / "little.pt"
    torch.save(sample(), little)
    big = tmp_path / "big.pt"
    _rewrite_zip(little, big, big_endian=True)
    assert read_file(big).metadata["byteorder"] == "big"
    assert check_against_torch(big) == 18  # torch.load swaps too
    with TensorSource(big) as source:
        assert torch.equal(source.tensor(source.walk("model", "w")[0]), sample()["model"]["w"])


def test_compressed_entries_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    torch.save(sample(), path)
    packed = tmp_path / "packed.pt"
    _rewrite_zip(path, packed, compress=zipfile.ZIP_DEFLATED)
    with pytest.raises(JobError, match=r"packed\.pt: entry .*/data(/\d+|\.pkl) is compressed"):
        TensorSource(packed)


def test_unreadable_files_name_themselves(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(JobError, match=r"bad\.pt"):
        TensorSource(bad)
    with pytest.raises(JobError, match=r"missing\.pt"):
        TensorSource(tmp_path / "missing.pt")
