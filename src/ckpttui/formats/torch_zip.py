"""Reader for files written by ``torch.save`` since torch 1.6 (the zip format).

Layout (torch/serialization.py ``_save`` with ``torch._C.PyTorchFileWriter``): a zip archive whose
entries are *stored*, not compressed, and padded so each record starts on a 64-byte boundary::

    <root>/data.pkl            pickle of the object; tensors are ``_rebuild_tensor_v2(storage, ...)``
                               and each storage is a persistent id
                               ``('storage', torch.<X>Storage, key, location, numel)``
                               (numel counts elements, or bytes for ``torch.UntypedStorage``)
    <root>/data/<key>          raw bytes of storage <key>, little-endian unless ``byteorder`` says so
    <root>/byteorder           ``little`` or ``big``
    <root>/version             serialization version
    <root>/.data/serialization_id

Only the central directory and ``data.pkl`` are read; storage entries are looked up, never read.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

from ckpttui.formats.errors import FormatError
from ckpttui.formats.unpickler import (
    ELEMENT_SIZE,
    MAX_INT64,
    PickleReader,
    StorageRef,
    UnpickleError,
    iter_tensors,
    storage_from_pid,
)
from ckpttui.records import FileIndex, TensorRecord

MAX_PICKLE_BYTES = 1 << 30  # data.pkl holds structure only; a gigabyte of it is not a checkpoint
MAX_SMALL_ENTRY = 4096  # byteorder, version


def _directory(path: Path | io.BytesIO) -> list[zipfile.ZipInfo]:
    """The central directory, or a FormatError: every way zipfile fails becomes one line."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.infolist()
    except zipfile.BadZipFile as exc:
        raise FormatError(f"truncated or damaged zip archive ({exc})") from None
    except UnicodeDecodeError:
        raise FormatError("zip archive has an entry name that is not valid UTF-8") from None
    except NotImplementedError as exc:
        raise FormatError(f"zip archive uses a feature ckpttui does not read ({exc})") from None
    except (ValueError, struct.error, EOFError, OverflowError, KeyError, IndexError) as exc:
        raise FormatError(f"damaged zip archive ({type(exc).__name__}: {exc})") from None


def read_entry(f: Any, info: zipfile.ZipInfo, size: int, limit: int) -> bytes:
    """The bytes of one *stored* entry, CRC-checked; compressed or encrypted entries are refused."""
    name = info.filename
    if info.flag_bits & 0x1:
        raise FormatError(f"entry {name} is encrypted: torch.save never encrypts (not read)")
    if info.compress_type != zipfile.ZIP_STORED:
        raise FormatError(
            f"entry {name} is compressed (method {info.compress_type}): torch.save stores "
            "entries uncompressed (not read)"
        )
    if info.file_size != info.compress_size:
        raise FormatError(f"entry {name}: stored sizes disagree ({info.file_size} bytes)")
    if info.file_size > limit:
        raise FormatError(f"entry {name} is {info.file_size} bytes: too large to read")
    if not 0 <= info.header_offset <= size - 30:
        raise FormatError(
            f"entry {name}: its local header offset {info.header_offset} is outside the file"
        )
    f.seek(info.header_offset)
    head = f.read(30)
    if len(head) < 30 or head[:4] != b"PK\x03\x04":
        raise FormatError(f"entry {name}: no local header at byte {info.header_offset}")
    name_len, extra_len = struct.unpack("<HH", head[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    if start + info.file_size > size:
        raise FormatError(
            f"entry {name} ends past the end of the file "
            f"(byte {start + info.file_size} of {size}): truncated"
        )
    f.seek(start)
    data = f.read(info.file_size)
    if len(data) != info.file_size:
        raise FormatError(f"entry {name} is cut short: truncated")
    if zlib.crc32(data) != info.CRC:
        raise FormatError(f"entry {name} fails its CRC check: damaged")
    return data


def _judge_all(path: Path, size: int, pickles: list[zipfile.ZipInfo]) -> list[str]:
    """What every readable data.pkl would run (for an archive refused for another reason)."""
    would_run: list[str] = []
    with open(path, "rb") as f:
        for info in pickles:
            try:
                raw = read_entry(f, info, size, MAX_PICKLE_BYTES)
                would_run += PickleReader(raw).load(lambda pid: None).would_run
            except FormatError:
                continue
            except UnpickleError as exc:
                would_run += exc.would_run
    return would_run


def judge_saved_bytes(data: bytes) -> list[str]:
    """What ``torch.load(BytesIO(data), weights_only=False)`` would run: every pickle of a
    torch.save stream (zip or legacy), as DCP keeps its non-tensor values in ``.distcp`` files."""
    would_run: list[str] = []

    def storage(pid: Any) -> StorageRef:
        return storage_from_pid(pid)

    if data.startswith(b"PK"):
        f = io.BytesIO(data)
        for info in _directory(f):
            if info.filename.endswith(".pkl"):
                raw = read_entry(f, info, len(data), MAX_PICKLE_BYTES)
                try:
                    would_run += PickleReader(raw).load(storage).would_run
                except UnpickleError as exc:
                    would_run += exc.would_run
        return would_run
    reader = PickleReader(data)
    try:
        for _ in range(5):  # a legacy stream: magic, protocol, sys_info, object, storage keys
            reader.load(storage)
    except UnpickleError as exc:
        would_run += exc.would_run
    return list(dict.fromkeys(would_run + list(reader.would_run)))


def read(path: Path, size: int) -> FileIndex:
    """Index a torch zip file: unpickle every ``data.pkl`` with stand-ins, check storage bounds."""
    infos = _directory(path)
    names = [i.filename for i in infos]
    pickles = [i for i in infos if i.filename.endswith("data.pkl")]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})[0]
        raise FormatError(
            f"zip archive holds entry {dup} twice: loaders disagree on which one is read",
            _judge_all(path, size, pickles),
        )
    if not pickles:
        raise FormatError("zip archive without <root>/data.pkl: not written by torch.save")
    # torch reads <first entry's folder>/data.pkl; every other data.pkl is judged as well.
    first_root = names[0].split("/", 1)[0] + "/"
    main = next((i for i in pickles if i.filename == first_root + "data.pkl"), pickles[0])
    root = main.filename[: -len("data.pkl")]
    entries = {
        i.filename[len(root) + 5 :]: i for i in infos if i.filename.startswith(root + "data/")
    }
    for info in infos:
        end = info.header_offset + 30 + len(info.filename) + info.compress_size
        if end > size or info.header_offset < 0:
            raise FormatError(
                f"entry {info.filename} ends past the end of the file "
                f"(byte {end} of {size}): truncated"
            )
    for info in entries.values():
        if info.flag_bits & 0x1:
            raise FormatError(f"entry {info.filename} is encrypted (not read)")
    if main.file_size > MAX_PICKLE_BYTES:
        raise FormatError(f"data.pkl is {main.file_size} bytes: too large to be a checkpoint index")
    byteorder = "little"
    with open(path, "rb") as f:
        raw = read_entry(f, main, size, MAX_PICKLE_BYTES)
        others = [
            (i.filename, read_entry(f, i, size, MAX_PICKLE_BYTES)) for i in pickles if i is not main
        ]
        order = next((i for i in infos if i.filename == root + "byteorder"), None)
        if order is not None:
            text = read_entry(f, order, size, MAX_SMALL_ENTRY).decode("ascii", "replace").strip()
            if text not in ("little", "big"):
                raise FormatError(f"entry {order.filename} says {text[:20]!r}, not little or big")
            byteorder = text

    storages: dict[str, int] = {}

    def persistent(pid: Any) -> StorageRef:
        ref = storage_from_pid(pid)
        info = entries.get(ref.key)
        if info is None:
            raise UnpickleError(f"storage data/{ref.key} is missing from the archive")
        if info.file_size < ref.nbytes:
            raise UnpickleError(
                f"storage data/{ref.key} holds {info.file_size} bytes but {ref.nbytes} are declared"
            )
        storages[ref.key] = ref.nbytes
        return ref

    would_run: list[str] = []
    for name, other in others:
        try:
            got = PickleReader(other).load(lambda pid: None)
            would_run += got.would_run
        except UnpickleError as exc:
            raise FormatError(f"{name}: {exc}", exc.would_run) from None
    try:
        result = PickleReader(raw).load(persistent)
    except UnpickleError as exc:
        raise FormatError(f"{main.filename}: {exc}", would_run + exc.would_run) from None
    tensors = records_from(result.data)
    compressed = sorted(k for k, i in entries.items() if i.compress_type != zipfile.ZIP_STORED)
    meta: dict[str, Any] = {"byteorder": byteorder, "root": root.rstrip("/")}
    if compressed:
        meta["compressed_storages"] = len(compressed)
    return FileIndex(
        str(path),
        "torch-zip",
        size,
        tensors=tensors,
        storages=storages,
        globals=sorted(result.globals),
        unsafe_globals=result.unsafe_globals,
        data=result.data,
        metadata=with_would_run(meta, would_run + result.would_run),
    )


def with_would_run(meta: dict[str, Any], would_run: list[str]) -> dict[str, Any]:
    """`meta`, plus ``would_run`` (what loading would call) when there is any."""
    if would_run:
        meta["would_run"] = list(dict.fromkeys(would_run))
    return meta


def records_from(data: Any) -> list[TensorRecord]:
    """Tensor records for every tensor in an unpickled object; raises if one overruns its storage."""
    records = []
    for path, ref in iter_tensors(data):
        name = "/".join(path)
        shape = ref.shape
        if any(not isinstance(d, int) or d < 0 for d in shape) or ref.storage_offset < 0:
            raise FormatError(f"tensor {name!r}: negative size or offset in shape {list(shape)}")
        if ref.stride is not None and any(s < 0 for s in ref.stride):
            raise FormatError(f"tensor {name!r}: negative stride {list(ref.stride)}")
        if ref.numel > MAX_INT64:
            raise FormatError(f"tensor {name!r}: shape {list(shape)} is too large")
        if ref.storage is not None and ref.numel:
            elsize = ELEMENT_SIZE.get(ref.dtype, 1)
            stride = ref.stride if ref.stride is not None else _contiguous(shape)
            last = ref.storage_offset + sum((d - 1) * s for d, s in zip(shape, stride))
            if (last + 1) * elsize > ref.storage.nbytes:
                raise FormatError(
                    f"tensor {name!r} reaches past the end of its storage "
                    f"{ref.storage.key} ({ref.storage.nbytes} bytes)"
                )
        records.append(
            TensorRecord(
                name=name,
                path=path,
                dtype=ref.dtype,
                shape=shape,
                nbytes=ref.nbytes,
                storage=ref.storage.key if ref.storage else None,
                storage_offset=ref.storage_offset,
                stride=ref.stride,
            )
        )
    return records


def _contiguous(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for d in reversed(shape):
        strides.append(step)
        step *= max(d, 1)
    return tuple(reversed(strides))
