"""Streaming writer of ``torch.save`` zip files for flat ``{name: tensor}`` state dicts.

``torch.save`` needs every tensor in memory. The format it writes (torch/serialization.py ``_save``
with ``PyTorchFileWriter``, torch 2.x) does not: a zip of *stored* entries, in this order::

    <root>/data.pkl                 pickle (protocol 2) of an OrderedDict name ->
                                    torch._utils._rebuild_tensor_v2(storage, 0, size, stride,
                                                                    False, OrderedDict())
                                    with each storage a persistent id
                                    ('storage', torch.<X>Storage, key, 'cpu', numel)
    <root>/.format_version          b"1"
    <root>/.storage_alignment       b"64"
    <root>/byteorder                b"little"
    <root>/data/<key>               each storage's raw bytes, starting on a 64-byte boundary
    <root>/version                  b"3\\n"
    <root>/.data/serialization_id   40 digits

The pickle only needs names, dtypes and shapes, so it is written first; then each tensor's bytes
are streamed into its ``data/<key>`` entry (alignment by padding the local header's extra field,
as torch's writer does), so one tensor is in memory at a time. Aliases (tied weights) pickle the
same tensor object, so ``torch.load`` returns one tensor under both names, as it does for
``torch.save`` output. The output is deterministic: same plan and values, same bytes.

Written in one pass, in order: each record's CRC-32 (ISA-L's where installed) is taken before its
local header is written, so no header is patched afterwards and the file's sha256 is computed as
the bytes go out (`HashingFile`; `finish` returns it). The pickle names torch's globals
(``torch._utils._rebuild_tensor_v2``, ``torch.FloatStorage``) without importing torch, so a job
that copies bytes (`Raw` values) never imports it. `check_records` reads the written file's
directory and local headers back; `check_crcs` also re-reads each record against its CRC-32.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import struct
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO, cast

from isal.isal_zlib import crc32  # ISA-L: several times zlib 1.2's CRC-32

from ckpttui.jobs.events import JobError
from ckpttui.jobs.st_writer import HashingFile, TensorSpec, Values, next_planned, tensor_bytes
from ckpttui.records import shape_numel

ALIGNMENT = 64
_EPOCH = (1980, 1, 1, 0, 0, 0)
_PAD_ID = 0x4246  # "FB": the extra-field id torch's miniz writer pads with
CHECK_CHUNK = 8 << 20


STORAGE_TYPES = {
    "float64": "DoubleStorage",
    "float32": "FloatStorage",
    "float16": "HalfStorage",
    "bfloat16": "BFloat16Storage",
    "int64": "LongStorage",
    "int32": "IntStorage",
    "int16": "ShortStorage",
    "int8": "CharStorage",
    "uint8": "ByteStorage",
    "bool": "BoolStorage",
    "complex64": "ComplexFloatStorage",
    "complex128": "ComplexDoubleStorage",
}
"""dtype name -> the ``torch.<X>Storage`` that ``torch.save`` names (torch 2.x
``_dtype_to_storage_type_map``); other dtypes ask torch."""


class Global:
    """Stands for a module-level name in the pickle (``torch._utils._rebuild_tensor_v2``),
    written by name, so torch need not be imported."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __reduce__(self) -> str:
        return self.name  # pickled as a global: see _Pickler.save_global

    def __call__(self, *args: Any) -> Any:  # pickle wants a reduce function to be callable
        raise TypeError(f"{self.module}.{self.name} is a name in a pickle, not a function")


_REBUILD = Global("torch._utils", "_rebuild_tensor_v2")


class _Storage:
    """Stands for one storage in the pickle; saved by persistent id."""

    def __init__(self, key: str, storage_type: Any, numel: int) -> None:
        self.key, self.storage_type, self.numel = key, storage_type, numel


class _Tensor:
    """Stands for one tensor in the pickle; reduces to ``torch._utils._rebuild_tensor_v2``."""

    def __init__(self, storage: _Storage, shape: tuple[int, ...]) -> None:
        self.storage, self.shape = storage, shape

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        stride = []
        acc = 1
        for d in reversed(self.shape):
            stride.append(acc)
            acc *= max(d, 1)
        return (
            _REBUILD,
            (self.storage, 0, self.shape, tuple(reversed(stride)), False, OrderedDict()),
        )


_PythonPickler: Any = pickle._Pickler  # type: ignore[attr-defined]


class _Pickler(_PythonPickler):  # the Python pickler: its save_global can be extended
    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, _Storage):
            return ("storage", obj.storage_type, obj.key, "cpu", obj.numel)
        return None

    def save_global(self, obj: Any, name: str | None = None) -> None:
        if not isinstance(obj, Global):
            super().save_global(obj, name)
            return
        # what the C pickler writes for a global at protocol 2
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)


def _storage_type(dtype: str) -> Any:
    known = STORAGE_TYPES.get(dtype)
    if known is not None:
        return Global("torch", known)
    import torch

    names = {
        str(k).removeprefix("torch."): v
        for k, v in torch.storage._dtype_to_storage_type_map().items()
    }
    if dtype not in names or dtype.startswith("q"):
        raise JobError(f"a .pt output cannot hold {dtype} tensors; write .safetensors instead")
    return getattr(torch, names[dtype])


class TorchZipWriter:
    """Writes a planned flat state dict as a torch zip file, tensor by tensor (see the module)."""

    def __init__(
        self,
        f: BinaryIO,
        specs: Sequence[TensorSpec],
        aliases: dict[str, str],
        root: str = "archive",
        wrap: Callable[[Any], Any] | None = None,
    ) -> None:
        """`wrap` puts the state dict inside a layout (``{"state_dict": sd, "epoch": 3}``)."""
        self.f = HashingFile(f)
        self.root = root
        self.order = [s for s in specs if s.name not in aliases]
        self.bytes_written = 0
        self._next = 0
        storage_types: dict[str, Any] = {}
        tensors: dict[str, _Tensor] = {}
        state: OrderedDict[str, _Tensor] = OrderedDict()
        for spec in specs:
            if spec.name in aliases:
                state[spec.name] = tensors[aliases[spec.name]]
                continue
            if spec.dtype not in storage_types:
                storage_types[spec.dtype] = _storage_type(spec.dtype)
            storage = _Storage(
                str(len(tensors)), storage_types[spec.dtype], shape_numel(spec.shape)
            )
            tensors[spec.name] = state[spec.name] = _Tensor(storage, spec.shape)
        buf = io.BytesIO()
        _Pickler(buf, protocol=2).dump(wrap(state) if wrap is not None else state)
        self._pickle = buf.getvalue()
        self._keys = {name: t.storage.key for name, t in tensors.items()}
        # the zip's central directory is written by zipfile (`finish`); the records by `_record`
        self.zip = zipfile.ZipFile(
            cast(BinaryIO, self.f),
            "w",
            compression=zipfile.ZIP_STORED,
            allowZip64=True,
        )
        self._record("data.pkl", self._pickle)
        self._record(".format_version", b"1")
        self._record(".storage_alignment", str(ALIGNMENT).encode())
        self._record("byteorder", sys.byteorder.encode())

    def _info(self, name: str, size: int) -> tuple[zipfile.ZipInfo, bool]:
        info = zipfile.ZipInfo(f"{self.root}/{name}", date_time=_EPOCH)
        info.compress_type = zipfile.ZIP_STORED
        info.file_size = size
        zip64 = size * 1.05 > zipfile.ZIP64_LIMIT  # the same test zipfile.open applies
        start = self.f.tell() + 30 + len(info.filename.encode("utf-8")) + (20 if zip64 else 0)
        pad = -(start + 4) % ALIGNMENT
        info.extra = struct.pack("<HH", _PAD_ID, pad) + b"Z" * pad
        return info, zip64

    def _record(self, name: str, data: bytes | memoryview) -> None:
        """One stored entry: its local header (CRC known beforehand, so never patched), then its
        bytes; the same bytes ``zipfile``'s own writer leaves in a seekable file."""
        size = len(data)
        info, zip64 = self._info(name, size)
        info.header_offset = self.f.tell()
        info.CRC = crc32(data, 0) & 0xFFFFFFFF
        info.compress_size = size
        info.flag_bits = 0
        info.external_attr = 0o600 << 16  # what ZipFile.open(..., "w") sets
        self.f.write(info.FileHeader(zip64))
        if size:
            self.f.write(data)
        self.zip.filelist.append(info)
        self.zip.NameToInfo[info.filename] = info
        self.zip.start_dir = self.f.tell()

    def write(self, name: str, tensor: Values) -> int:
        """Append the next planned (non-alias) tensor's bytes as its storage record."""
        next_planned(self.order, self._next, name, tensor, self.root)
        data = tensor_bytes(tensor)
        self._record(f"data/{self._keys[name]}", data)
        self._next += 1
        self.bytes_written += len(data)
        return len(data)

    def finish(self) -> str:
        """Write the trailing records and the central directory; return the file's sha256."""
        if self._next != len(self.order):
            raise JobError(f"{len(self.order) - self._next} planned tensors were never written")
        self._record("version", b"3\n")
        digest = int.from_bytes(hashlib.sha256(self._pickle).digest()[:16], "big")
        self._record(".data/serialization_id", f"{digest % 10**40:040d}".encode())
        self.zip.close()
        self.f.flush()
        return self.f.hexdigest()

    def abort(self) -> None:
        """Drop the archive without writing its directory (the caller discards the file)."""
        self.zip.fp = None  # ZipFile.close(), also run by __del__, then does nothing


def check_crcs(path: str | os.PathLike[str], shown: str | os.PathLike[str] | None = None) -> None:
    """Re-read every entry of a stored zip (a written torch file) against its CRC-32.

    A page-cache read and ISA-L's CRC, several times faster than hashing it again. A mismatch is a
    `JobError` naming `shown` (or `path`).
    """
    check_records(path, shown, crcs=True)


def check_records(
    path: str | os.PathLike[str], shown: str | os.PathLike[str] | None = None, *, crcs: bool
) -> None:
    """Read a written torch zip's directory back, and every entry's local header (its data must
    lie inside the file); with `crcs`, also every entry's data against its CRC-32.

    Jobs check the headers only: right after the write, a re-read of the data comes from the page
    cache, the very bytes the CRCs were computed from, and costs a third of the write (0.1-0.3 s
    per 428 MB here); ``ckpttui verify`` re-reads the data. Errors are `JobError`s naming `shown`.
    """
    where = shown if shown is not None else path
    buf = bytearray(CHECK_CHUNK if crcs else 0)
    view = memoryview(buf)
    with open(path, "rb") as f:
        try:
            infos = zipfile.ZipFile(f).infolist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise JobError(f"{where}: written but does not read back: {exc}") from None
        fd = f.fileno()
        size = os.fstat(fd).st_size
        for info in infos:
            head = os.pread(fd, 30, info.header_offset)
            if len(head) < 30 or head[:4] != b"PK\x03\x04":
                raise JobError(f"{where}: written but {info.filename} has no local header")
            name_len, extra_len = struct.unpack("<HH", head[26:30])
            at = info.header_offset + 30 + name_len + extra_len
            if at + info.file_size > size:
                raise JobError(f"{where}: written but {info.filename} is cut short")
            if not crcs:
                continue
            left, crc = info.file_size, 0
            while left:
                n = os.preadv(fd, [view[: min(left, CHECK_CHUNK)]], at)
                if n <= 0:
                    raise JobError(f"{where}: written but {info.filename} is cut short")
                crc = crc32(view[:n], crc)
                at += n
                left -= n
            if crc & 0xFFFFFFFF != info.CRC:
                raise JobError(
                    f"{where}: written but {info.filename} reads back with another CRC-32 "
                    "(the disk did not keep what was written)"
                )
