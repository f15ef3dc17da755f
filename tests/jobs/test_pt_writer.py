"""The streaming torch zip writer: torch.load (plain and mmap) reads it like torch.save output."""

from __future__ import annotations

import hashlib
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from ckpttui.formats import read_file
from ckpttui.jobs.events import JobError
from ckpttui.jobs.pt_writer import ALIGNMENT, TorchZipWriter, check_crcs, check_records
from ckpttui.jobs.st_writer import TensorSpec


def values() -> OrderedDict[str, torch.Tensor]:
    """Mixed dtypes, 0-d, empty, non-contiguous input."""
    gen = torch.Generator().manual_seed(5)
    return OrderedDict(
        [
            ("w", torch.randn(3, 4, generator=gen).t()),
            ("bf", torch.randn(5, generator=gen).bfloat16()),
            ("n", torch.tensor(7, dtype=torch.int64)),
            ("e", torch.zeros(0, 2)),
            ("m", torch.tensor([True, False])),
            ("d", torch.randn(2, generator=gen, dtype=torch.float64)),
        ]
    )


def write(path: Path, vals: OrderedDict[str, torch.Tensor], aliases: dict[str, str]) -> None:
    """Write `vals` plus aliases (listed last) with TorchZipWriter."""
    specs = [
        TensorSpec(k, str(v.dtype).removeprefix("torch."), tuple(v.shape)) for k, v in vals.items()
    ]
    specs += [
        TensorSpec(a, specs[list(vals).index(o)].dtype, tuple(vals[o].shape))
        for a, o in aliases.items()
    ]
    with open(path, "wb") as f:
        writer = TorchZipWriter(f, specs, aliases, root=path.stem)
        for name, value in vals.items():
            writer.write(name, value)
        writer.finish()


@pytest.mark.parametrize("mmap", [False, True])
def test_torch_load_reads_it(tmp_path: Path, mmap: bool) -> None:
    path = tmp_path / "out.pt"
    vals = values()
    write(path, vals, {"w_alias": "w"})
    loaded = torch.load(path, weights_only=True, mmap=mmap)
    assert isinstance(loaded, OrderedDict) and list(loaded) == [*vals, "w_alias"]
    for name, value in vals.items():
        assert loaded[name].dtype == value.dtype and torch.equal(loaded[name], value), name
        assert loaded[name].is_contiguous()
    assert loaded["w_alias"] is loaded["w"]


def test_layout_matches_torch_save(tmp_path: Path) -> None:
    path = tmp_path / "out.pt"
    write(path, values(), {})
    with zipfile.ZipFile(path) as z:
        names = [i.filename for i in z.infolist()]
        assert names[:4] == [
            "out/data.pkl",
            "out/.format_version",
            "out/.storage_alignment",
            "out/byteorder",
        ]
        assert names[-2:] == ["out/version", "out/.data/serialization_id"]
        for info in z.infolist():
            assert info.compress_type == zipfile.ZIP_STORED
    index = read_file(path)
    assert index.error is None and len(index.tensors) == 6
    assert not index.unsafe_globals
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            if "/data/" in info.filename:
                name_len, extra_len = (
                    int.from_bytes(raw[info.header_offset + 26 :][:2], "little"),
                    int.from_bytes(raw[info.header_offset + 28 :][:2], "little"),
                )
                assert (info.header_offset + 30 + name_len + extra_len) % ALIGNMENT == 0


def test_output_is_deterministic(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pt", tmp_path / "b" / "a.pt"
    b.parent.mkdir()
    write(a, values(), {"x": "n"})
    write(b, values(), {"x": "n"})
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()


def test_refuses_what_torch_files_cannot_hold_and_out_of_order_writes(tmp_path: Path) -> None:
    with open(tmp_path / "q.pt", "wb") as f, pytest.raises(JobError, match="safetensors"):
        TorchZipWriter(f, [TensorSpec("q", "qint8", (2,))], {})
    with open(tmp_path / "o.pt", "wb") as f:
        writer = TorchZipWriter(f, [TensorSpec("a", "float32", (2,))], {})
        with pytest.raises(JobError, match="expected 'a'"):
            writer.write("b", torch.zeros(2))
        with pytest.raises(JobError, match="never written"):
            writer.finish()
        writer.abort()


def test_pickle_names_torch_globals_as_torch_pickles_them(tmp_path: Path) -> None:
    """Storage types and the rebuild function are written by name, without importing torch: the
    same pickle bytes as the C pickler gives with torch's own objects."""
    import pickle

    from ckpttui.jobs import pt_writer

    for dtype, storage in torch.storage._dtype_to_storage_type_map().items():
        name = str(dtype).removeprefix("torch.")
        if name in pt_writer.STORAGE_TYPES:
            assert pt_writer.STORAGE_TYPES[name] == storage, name
    assert pickle.dumps(torch.FloatStorage, protocol=2) == b"\x80\x02ctorch\nFloatStorage\nq\x00."
    path = tmp_path / "flat.pt"
    write(path, values(), {"w_alias": "w"})
    with zipfile.ZipFile(path) as z:
        ours = z.read("flat/data.pkl")
    assert b"ctorch._utils\n_rebuild_tensor_v2\n" in ours and b"ctorch\nBFloat16Storage\n" in ours
    loaded = torch.load(path, weights_only=True)
    # torch.save's pickle of the same (contiguous) values: same opcodes for every tensor
    plain = OrderedDict((k, v.contiguous()) for k, v in loaded.items())
    torch.save(plain, tmp_path / "torch.pt")
    with zipfile.ZipFile(tmp_path / "torch.pt") as z:
        assert z.read("torch/data.pkl") == ours


def write_values(path: Path) -> str:
    """`values()` written by `TorchZipWriter` (root ``out``) at `path`; its sha256."""
    vals = values()
    specs = [
        TensorSpec(k, str(v.dtype).removeprefix("torch."), tuple(v.shape)) for k, v in vals.items()
    ]
    with open(path, "wb") as f:
        writer = TorchZipWriter(f, specs, {}, root="out")
        for name, value in vals.items():
            writer.write(name, value)
        return writer.finish()


def test_sha256_is_computed_while_writing_and_a_changed_byte_fails_the_crc_check(
    tmp_path: Path,
) -> None:
    path = tmp_path / "out.pt"
    digest = write_values(path)
    raw = bytearray(path.read_bytes())
    assert digest == hashlib.sha256(raw).hexdigest()
    check_crcs(path)
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("out/data/0")
    name_len, extra_len = (
        int.from_bytes(raw[info.header_offset + k :][:2], "little") for k in (26, 28)
    )
    raw[info.header_offset + 30 + name_len + extra_len] ^= 1
    path.write_bytes(raw)
    with pytest.raises(JobError, match=r"shown\.pt: written but out/data/0 reads back"):
        check_crcs(path, tmp_path / "shown.pt")
    check_records(path, crcs=False)  # what jobs check: the directory and the local headers


def test_header_check_finds_a_record_running_past_the_end(tmp_path: Path) -> None:
    """Jobs read the written zip's directory and local headers back (not the data): a record
    whose bytes would run past the end of the file is an error naming the file and the record."""
    path = tmp_path / "out.pt"
    write_values(path)
    check_records(path, crcs=False)
    raw = bytearray(path.read_bytes())
    entry = raw.index(b"PK\x01\x02")  # the central directory's first entry
    while raw[entry + 46 :][: len(b"out/data/0")] != b"out/data/0":
        entry = raw.index(b"PK\x01\x02", entry + 4)
    raw[entry + 20 : entry + 28] = (len(raw) * 2).to_bytes(4, "little") * 2  # both sizes
    path.write_bytes(raw)
    with pytest.raises(JobError, match=r"shown\.pt: written but out/data/0 is cut short"):
        check_records(path, tmp_path / "shown.pt", crcs=False)
