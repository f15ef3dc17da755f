"""Where a ``torch.save`` zip that was cut short ends, from its local headers alone.

A zip's central directory is written last, so a file cut short (a full disk, a killed writer, an
interrupted copy) has none, and `zipfile` cannot open it. Its records can still be walked from
the start: each is a local header (``PK\\x03\\x04``, 30 bytes + name + extra field) then its data.
``torch.save`` (``caffe2/serialize/inline_container.cc`` through miniz) sets flag bit 3 and writes
each record's sizes after its data, in a data descriptor (``PK\\x07\\x08``, CRC-32, compressed
and uncompressed size: 16 bytes, 24 with zip64), so a record's length comes from:

* its local header, when the sizes are there (other writers);
* the pickle, for storages ``<root>/data/<key>`` (``numel x element size``, read from
  ``data.pkl``, the first record, with the restricted unpickler: no code runs);
* a search for the descriptor that names its own distance, for the few small records left
  (``data.pkl``, ``byteorder``, ``version``).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckpttui.formats import FormatError
from ckpttui.formats.torch_zip import records_from
from ckpttui.formats.unpickler import StorageRef, UnpickleError, restricted_load, storage_from_pid

LOCAL = struct.Struct("<IHHHHHIIIHH")
LOCAL_MAGIC = 0x04034B50
_CENTRAL_MAGIC = 0x02014B50
_DESCRIPTOR_MAGIC = b"PK\x07\x08"
_SEARCH = 64 << 20  # small records only are searched for their descriptor


@dataclass
class Cut:
    """Where a zip cut short ends."""

    record: str | None
    """The record the file ends inside; None when it ends after a whole record."""
    last: str | None
    """The last whole record."""
    tensors: list[str] = field(default_factory=list)
    """Tensors whose storage is `record`."""


def find_cut(path: Path, size: int) -> Cut | None:
    """Walk the local headers of a zip without central directory; None if it cannot be walked."""
    sizes: dict[str, int] = {}
    names: dict[str, list[str]] = {}
    last = None
    try:
        with open(path, "rb") as f:
            fd = f.fileno()
            pos = 0
            while pos + LOCAL.size <= size:
                fields = LOCAL.unpack(os.pread(fd, LOCAL.size, pos))
                if fields[0] == _CENTRAL_MAGIC:
                    return None  # the central directory is there: not a file cut short
                if fields[0] != LOCAL_MAGIC:
                    break
                flags, csize, nlen, xlen = fields[2], fields[7], fields[9], fields[10]
                name = os.pread(fd, nlen, pos + LOCAL.size).decode("utf-8", "replace")
                extra = os.pread(fd, xlen, pos + LOCAL.size + nlen)
                start = pos + LOCAL.size + nlen + xlen
                key = name.rsplit("/data/", 1)[-1] if "/data/" in name else ""
                if csize == 0xFFFFFFFF:
                    csize = _zip64_size(extra, fields[8] == 0xFFFFFFFF)
                elif flags & 0x08 and key in sizes:
                    csize = sizes[key]
                elif flags & 0x08:
                    found = _descriptor(fd, start, size)
                    if found is None:
                        return Cut(name, last, names.get(key, []))
                    csize = found
                if start + csize > size:
                    return Cut(name, last, names.get(key, []))
                if name.endswith("/data.pkl"):
                    sizes, names = _storages(os.pread(fd, csize, start))
                last = name
                pos = start + csize
                if flags & 0x08:
                    pos += 24 if _zip64_size(extra, True) else 16
    except OSError:
        return None
    return Cut(None, last) if last is not None else None


def _descriptor(fd: int, start: int, size: int) -> int | None:
    """Length of the record starting at `start`, from the data descriptor that follows it."""
    window = os.pread(fd, min(size - start, _SEARCH), start)
    at = window.find(_DESCRIPTOR_MAGIC)
    while at >= 0:
        if at + 16 <= len(window) and struct.unpack_from("<I", window, at + 8)[0] == at:
            return at
        at = window.find(_DESCRIPTOR_MAGIC, at + 1)
    return None


def _zip64_size(extra: bytes, has_usize: bool) -> int:
    """The compressed size in a zip64 extra field (0 when there is none)."""
    at = 0
    while at + 4 <= len(extra):
        tag, n = struct.unpack_from("<HH", extra, at)
        if tag == 0x0001:
            off = at + 4 + (8 if has_usize else 0)
            if off + 8 <= at + 4 + n:
                return int(struct.unpack_from("<Q", extra, off)[0])
        at += 4 + n
    return 0


def _storages(raw: bytes) -> tuple[dict[str, int], dict[str, list[str]]]:
    """Storage sizes and storage key -> tensor names, from data.pkl (restricted, runs no code)."""
    sizes: dict[str, int] = {}

    def persistent(pid: Any) -> StorageRef:
        ref = storage_from_pid(pid)
        sizes[ref.key] = ref.nbytes
        return ref

    try:
        recs = records_from(restricted_load(raw, persistent).data)
    except (UnpickleError, FormatError, ValueError):
        return {}, {}  # a damaged data.pkl only costs us the tensors' names
    names: dict[str, list[str]] = {}
    for rec in recs:
        if rec.storage is not None:
            names.setdefault(rec.storage, []).append(rec.name)
    return sizes, names
