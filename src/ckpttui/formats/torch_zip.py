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

import zipfile
from pathlib import Path
from typing import Any

from ckpttui.formats.errors import FormatError
from ckpttui.formats.unpickler import (
    ELEMENT_SIZE,
    StorageRef,
    UnpickleError,
    iter_tensors,
    restricted_load,
    storage_from_pid,
)
from ckpttui.records import FileIndex, TensorRecord

MAX_PICKLE_BYTES = 1 << 30  # data.pkl holds structure only; a gigabyte of it is not a checkpoint


def read(path: Path, size: int) -> FileIndex:
    """Index a torch zip file: unpickle ``data.pkl`` with stand-ins, check every storage's bounds."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise FormatError(f"truncated or damaged zip archive ({exc})") from None
    with archive:
        infos = archive.infolist()
        pickles = [
            i for i in infos if i.filename.endswith("/data.pkl") and i.filename.count("/") == 1
        ]
        if not pickles:
            raise FormatError("zip archive without <root>/data.pkl: not written by torch.save")
        pkl = pickles[0]
        root = pkl.filename[: -len("data.pkl")]
        entries = {
            i.filename[len(root) + 5 :]: i for i in infos if i.filename.startswith(root + "data/")
        }
        for info in (pkl, *entries.values()):
            end = info.header_offset + 30 + len(info.filename) + info.compress_size
            if end > size:
                raise FormatError(
                    f"entry {info.filename} ends past the end of the file "
                    f"(byte {end} of {size}): truncated"
                )
        if pkl.file_size > MAX_PICKLE_BYTES:
            raise FormatError(
                f"data.pkl is {pkl.file_size} bytes: too large to be a checkpoint index"
            )
        try:
            raw = archive.read(pkl)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise FormatError(f"cannot read {pkl.filename}: {exc}") from None
        byteorder = "little"
        if root + "byteorder" in archive.NameToInfo:
            byteorder = archive.read(root + "byteorder").decode("ascii", "replace").strip()

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

    try:
        result = restricted_load(raw, persistent)
    except UnpickleError as exc:
        raise FormatError(f"{pkl.filename}: {exc}") from None
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
        metadata=meta,
    )


def records_from(data: Any) -> list[TensorRecord]:
    """Tensor records for every tensor in an unpickled object; raises if one overruns its storage."""
    records = []
    for path, ref in iter_tensors(data):
        name = "/".join(path)
        if ref.storage is not None and ref.numel:
            elsize = ELEMENT_SIZE.get(ref.dtype, 1)
            stride = ref.stride or ()
            last = ref.storage_offset + sum((d - 1) * s for d, s in zip(ref.shape, stride))
            if ref.storage_offset < 0 or (last + 1) * elsize > ref.storage.nbytes:
                raise FormatError(
                    f"tensor {name!r} reaches past the end of its storage "
                    f"{ref.storage.key} ({ref.storage.nbytes} bytes)"
                )
        records.append(
            TensorRecord(
                name=name,
                path=path,
                dtype=ref.dtype,
                shape=ref.shape,
                nbytes=ref.nbytes,
                storage=ref.storage.key if ref.storage else None,
                storage_offset=ref.storage_offset,
                stride=ref.stride,
            )
        )
    return records
