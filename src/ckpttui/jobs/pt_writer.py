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
"""

from __future__ import annotations

import hashlib
import io
import pickle
import struct
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO

from ckpttui.jobs.events import JobError
from ckpttui.jobs.st_writer import TensorSpec, next_planned, tensor_bytes
from ckpttui.records import shape_numel

if TYPE_CHECKING:
    import torch

ALIGNMENT = 64
_EPOCH = (1980, 1, 1, 0, 0, 0)
_PAD_ID = 0x4246  # "FB": the extra-field id torch's miniz writer pads with


class _Storage:
    """Stands for one storage in the pickle; saved by persistent id."""

    def __init__(self, key: str, storage_type: Any, numel: int) -> None:
        self.key, self.storage_type, self.numel = key, storage_type, numel


class _Tensor:
    """Stands for one tensor in the pickle; reduces to ``torch._utils._rebuild_tensor_v2``."""

    def __init__(self, storage: _Storage, shape: tuple[int, ...]) -> None:
        self.storage, self.shape = storage, shape

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        import torch

        stride = []
        acc = 1
        for d in reversed(self.shape):
            stride.append(acc)
            acc *= max(d, 1)
        return (
            torch._utils._rebuild_tensor_v2,
            (self.storage, 0, self.shape, tuple(reversed(stride)), False, OrderedDict()),
        )


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, _Storage):
            return ("storage", obj.storage_type, obj.key, "cpu", obj.numel)
        return None


def _storage_type(dtype: str) -> Any:
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
        self.f = f
        self.root = root
        self.order = [s for s in specs if s.name not in aliases]
        self.bytes_written = 0
        self._next = 0
        tensors: dict[str, _Tensor] = {}
        state: OrderedDict[str, _Tensor] = OrderedDict()
        for spec in specs:
            if spec.name in aliases:
                state[spec.name] = tensors[aliases[spec.name]]
                continue
            storage = _Storage(
                str(len(tensors)), _storage_type(spec.dtype), shape_numel(spec.shape)
            )
            tensors[spec.name] = state[spec.name] = _Tensor(storage, spec.shape)
        buf = io.BytesIO()
        _Pickler(buf, protocol=2).dump(wrap(state) if wrap is not None else state)
        self._pickle = buf.getvalue()
        self._keys = {name: t.storage.key for name, t in tensors.items()}
        self.zip = zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
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
        info, zip64 = self._info(name, len(data))
        with self.zip.open(info, "w", force_zip64=zip64) as w:
            w.write(data)

    def write(self, name: str, tensor: torch.Tensor) -> int:
        """Append the next planned (non-alias) tensor's bytes as its storage record."""
        next_planned(self.order, self._next, name, tensor, self.root)
        data = tensor_bytes(tensor)
        self._record(f"data/{self._keys[name]}", data)
        self._next += 1
        self.bytes_written += len(data)
        return len(data)

    def finish(self) -> None:
        """Write the trailing records and the central directory."""
        if self._next != len(self.order):
            raise JobError(f"{len(self.order) - self._next} planned tensors were never written")
        self._record("version", b"3\n")
        digest = int.from_bytes(hashlib.sha256(self._pickle).digest()[:16], "big")
        self._record(".data/serialization_id", f"{digest % 10**40:040d}".encode())
        self.zip.close()
        self.f.flush()

    def abort(self) -> None:
        """Drop the archive without writing its directory (the caller discards the file)."""
        self.zip.fp = None  # ZipFile.close(), also run by __del__, then does nothing
