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

import mmap
import struct
from pathlib import Path
from typing import Any

from ckpttui.formats.errors import FormatError
from ckpttui.formats.torch_zip import records_from, with_would_run
from ckpttui.formats.unpickler import (
    ELEMENT_SIZE,
    PickleReader,
    StorageRef,
    UnpickleError,
    is_safe_global,
    storage_from_pid,
)
from ckpttui.records import FileIndex

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001


def _mapped(path: Path) -> Any:
    with open(path, "rb") as f:
        try:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (ValueError, OSError) as exc:
            raise FormatError(f"cannot map the file ({exc})") from None


def read(path: Path, size: int) -> FileIndex:
    """Index a legacy torch file: all five pickles (each judged), then the storage counts."""
    storages: dict[str, StorageRef] = {}

    def persistent(pid: Any) -> StorageRef:
        ref = storage_from_pid(pid)
        storages.setdefault(ref.key, ref)
        return storages[ref.key]

    buf = _mapped(path)
    try:
        return _read(path, size, buf, storages, persistent)
    finally:
        buf.close()


def _read(
    path: Path,
    size: int,
    buf: Any,
    storages: dict[str, StorageRef],
    persistent: Any,
) -> FileIndex:
    reader = PickleReader(buf)
    problem = None
    try:
        # torch.load unpickles all five before it looks at any: judge them all first.
        magic = reader.load().data
        protocol = reader.load().data
        sys_info = reader.load().data
        main = reader.load(persistent)
        keys = reader.load().data
    except UnpickleError as exc:
        raise FormatError(str(exc), exc.would_run) from None
    would_run = list(reader.would_run)
    if magic != MAGIC_NUMBER:
        problem = "pickle does not start with torch's legacy magic number"
    elif protocol != PROTOCOL_VERSION:
        problem = f"legacy torch protocol {str(protocol)[:20]} is not {PROTOCOL_VERSION}"
    elif not isinstance(keys, list):
        problem = "storage key list is not a list"
    if problem:
        raise FormatError(problem, would_run)
    little = not (isinstance(sys_info, dict) and sys_info.get("little_endian") is False)
    offsets: dict[str, int] = {}
    pos = reader.pos
    for key in keys:
        ref = storages.get(str(key))
        if ref is None:
            raise FormatError(
                f"storage {str(key)[:40]} is listed but no tensor uses it (byte {pos})", would_run
            )
        head = buf[pos : pos + 8]
        if len(head) < 8:
            raise FormatError(
                f"storage {key} starts past the end of the file (byte {pos})", would_run
            )
        count = struct.unpack("<q" if little else ">q", head)[0]
        elsize = ELEMENT_SIZE.get(ref.dtype, 1)
        if count < 0 or count * elsize != ref.nbytes:
            raise FormatError(
                f"storage {key} at byte {pos} holds {count} elements, "
                f"the pickle says {ref.nbytes // elsize}",
                would_run,
            )
        offsets[ref.key] = pos + 8
        pos += 8 + count * elsize
        if pos > size:
            raise FormatError(
                f"storage {key} ends at byte {pos}, past the end of the file "
                f"({size} bytes): truncated",
                would_run,
            )
    tensors = records_from(main.data)
    return FileIndex(
        str(path),
        "torch-legacy",
        size,
        tensors=tensors,
        storages={k: r.nbytes for k, r in storages.items()},
        globals=sorted(reader.globals),
        unsafe_globals=sorted(g for g in reader.globals if not is_safe_global(g)),
        data=main.data,
        metadata=with_would_run(
            {"byteorder": "little" if little else "big", "storage_offsets": offsets}, would_run
        ),
    )


def read_plain_pickle(path: Path, size: int) -> FileIndex:
    """Index a plain pickle (``pickle.dump``): no storages, but its globals are still judged."""
    buf = _mapped(path)
    try:
        result = PickleReader(buf).load(persistent=lambda pid: None)
    except UnpickleError as exc:
        raise FormatError(str(exc), exc.would_run) from None
    finally:
        buf.close()
    return FileIndex(
        str(path),
        "pickle",
        size,
        tensors=records_from(result.data),
        globals=sorted(result.globals),
        unsafe_globals=result.unsafe_globals,
        data=result.data,
        metadata=with_would_run({}, result.would_run),
    )
