"""Reader for ``torch.save(..., _use_new_zipfile_serialization=False)`` files, and plain pickles.

Layout (torch/serialization.py ``_legacy_save``), five pickles then raw storages::

    pickle  magic number 0x1950a86a20f9469cfc6c
    pickle  protocol version 1001
    pickle  sys_info {"protocol_version", "little_endian", "type_sizes"}
    pickle  the object; storages are persistent ids
            ('storage', torch.<X>Storage, key, location, numel, view_metadata)
    pickle  list of storage keys, in the order their bytes follow
    for each key: int64 little-endian element count, then count x element size bytes

The storage area is walked by seeking from count to count; the bytes themselves are never read.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from ckpttui.formats.errors import FormatError
from ckpttui.formats.torch_zip import records_from
from ckpttui.formats.unpickler import (
    ELEMENT_SIZE,
    StorageRef,
    UnpickleError,
    restricted_load,
    storage_from_pid,
)
from ckpttui.records import FileIndex

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001


def read(path: Path, size: int) -> FileIndex:
    """Index a legacy torch file: its object pickle, then the storage counts that follow it."""
    storages: dict[str, StorageRef] = {}

    def persistent(pid: Any) -> StorageRef:
        ref = storage_from_pid(pid)
        storages.setdefault(ref.key, ref)
        return storages[ref.key]

    with open(path, "rb") as f:
        try:
            magic = restricted_load(f).data
            if magic != MAGIC_NUMBER:
                raise FormatError("pickle does not start with torch's legacy magic number")
            protocol = restricted_load(f).data
            if protocol != PROTOCOL_VERSION:
                raise FormatError(f"legacy torch protocol {protocol!r} is not {PROTOCOL_VERSION}")
            sys_info = restricted_load(f).data
            main = restricted_load(f, persistent)
            keys = restricted_load(f).data
        except UnpickleError as exc:
            raise FormatError(str(exc)) from None
        if not isinstance(keys, list):
            raise FormatError("storage key list is not a list")
        little = not (isinstance(sys_info, dict) and sys_info.get("little_endian") is False)
        offsets: dict[str, int] = {}
        pos = f.tell()
        for key in keys:
            ref = storages.get(str(key))
            if ref is None:
                raise FormatError(f"storage {key} is listed but no tensor uses it (byte {pos})")
            f.seek(pos)
            head = f.read(8)
            if len(head) < 8:
                raise FormatError(f"storage {key} starts past the end of the file (byte {pos})")
            count = struct.unpack("<q" if little else ">q", head)[0]
            elsize = ELEMENT_SIZE.get(ref.dtype, 1)
            if count * elsize != ref.nbytes:
                raise FormatError(
                    f"storage {key} at byte {pos} holds {count} elements, "
                    f"the pickle says {ref.nbytes // elsize}"
                )
            offsets[ref.key] = pos + 8
            pos += 8 + count * elsize
            if pos > size:
                raise FormatError(
                    f"storage {key} ends at byte {pos}, past the end of the file "
                    f"({size} bytes): truncated"
                )
    tensors = records_from(main.data)
    return FileIndex(
        str(path),
        "torch-legacy",
        size,
        tensors=tensors,
        storages={k: r.nbytes for k, r in storages.items()},
        globals=sorted(main.globals),
        unsafe_globals=main.unsafe_globals,
        data=main.data,
        metadata={"byteorder": "little" if little else "big", "storage_offsets": offsets},
    )


def read_plain_pickle(path: Path, size: int) -> FileIndex:
    """Index a plain pickle (``pickle.dump``): no storages, but its globals are still reported."""
    with open(path, "rb") as f:
        try:
            result = restricted_load(f, persistent=lambda pid: None)
        except UnpickleError as exc:
            raise FormatError(str(exc)) from None
    return FileIndex(
        str(path),
        "pickle",
        size,
        tensors=records_from(result.data),
        globals=sorted(result.globals),
        unsafe_globals=result.unsafe_globals,
        data=result.data,
    )
