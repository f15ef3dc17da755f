"""Tensor data read in place: one checkpoint file, memory-mapped once, tensors as views of it.

`TensorSource` indexes a file with `ckpttui.formats.read_file` (no torch, no code from the pickle),
maps the whole file copy-on-write (``mmap.ACCESS_COPY``: pages are read on demand, and a stray
in-place write can never reach the file), and hands out torch tensors that *view* the mapping:

* torch zip: storage ``<root>/data/<key>`` starts after its local file header, at
  ``header_offset + 30 + name length + extra length`` (both lengths read from the local header,
  which may differ from the central directory's). ``torch.save`` stores entries uncompressed;
  a compressed entry cannot be mapped and is refused.
* legacy torch: each storage's first byte, as the reader found it (``metadata["storage_offsets"]``).
* safetensors: the tensor's ``data_offset`` (each tensor is its own storage).

A tensor is ``storage.view(dtype).as_strided(shape, stride, storage_offset)``, so views, 0-d
tensors and tensors that share a storage (tied weights) share memory exactly as ``torch.load``
gives them. Files declaring ``byteorder`` ``big`` are byte-swapped into a copy per storage.
The mapping lives until the last tensor viewing it is freed; `TensorSource.release` gives back
the pages read so far (jobs call it after each tensor they write, so resident memory stays flat).
"""

from __future__ import annotations

import mmap
import os
import struct
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckpttui.formats import read_file
from ckpttui.formats.unpickler import ELEMENT_SIZE, OpaqueObject, TensorRef
from ckpttui.jobs.events import JobError
from ckpttui.jobs.st_writer import Raw, Values
from ckpttui.records import FileIndex, TensorRecord

if TYPE_CHECKING:
    import torch
    from typing_extensions import Self

_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., name length, extra length
_LOCAL_MAGIC = b"PK\x03\x04"
MAPPABLE = ("torch-zip", "torch-legacy", "safetensors")
_SUB_BYTE = {f"{kind}{bits}" for kind in ("int", "uint") for bits in range(1, 8)}


def torch_dtype(name: str, where: str = "") -> torch.dtype:
    """The torch dtype for a dtype name (``bfloat16``), or a `JobError` naming `where`."""
    import torch

    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or name.startswith(("q", "bits")) or name in _SUB_BYTE:
        raise JobError(f"{where}: tensors of dtype {name} cannot be read as plain numbers")
    return dtype


def pread_exact(fd: int, dest: memoryview, offset: int, where: str) -> None:
    """Fill `dest` with the bytes of `fd` at `offset` (``pread``, no mapping); a file that ends
    first is a JobError naming `where`."""
    done, size = 0, len(dest)
    while done < size:
        n = os.preadv(fd, [dest[done:]], offset + done)
        if n <= 0:
            raise JobError(f"{where}: ends before byte {offset + size} (truncated?)")
        done += n


class TensorSource:
    """One checkpoint file opened for reading tensor data in place (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str], index: FileIndex | None = None) -> None:
        self.path = Path(path)
        self.index = index if index is not None else read_file(self.path)
        if self.index.error:
            raise JobError(f"{self.path}: {self.index.error}")
        if self.index.format not in MAPPABLE:
            raise JobError(f"{self.path}: {self.index.format} files hold no tensor data to read")
        self.big_endian = self.index.metadata.get("byteorder", "little") == "big"
        self._file = open(self.path, "rb")  # noqa: SIM115 - lives as long as the source
        try:
            size = os.fstat(self._file.fileno()).st_size
            if size != self.index.size:
                raise JobError(
                    f"{self.path}: file changed size while being read "
                    f"({self.index.size} -> {size} bytes)"
                )
            self._map: mmap.mmap | None = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_COPY)
            self._headers: dict[str, zipfile.ZipInfo] = {}
            self._offsets = self._storage_offsets()
        except BaseException:
            self._file.close()
            raise
        self._bases: dict[tuple[str, int], torch.Tensor] = {}
        self._touched: list[tuple[int, int]] = []

    # ------------------------------------------------------------------ structure

    @property
    def data(self) -> Any:
        """The unpickled skeleton (dicts, lists, scalars, `TensorRef` leaves); None: safetensors."""
        return self.index.data

    @property
    def records(self) -> list[TensorRecord]:
        """Every tensor in the file, in the order the reader met them."""
        return self.index.tensors

    def walk(self, *prefix: str) -> list[TensorRecord]:
        """Records whose key path starts with `prefix` (``walk("optimizer", "state")``)."""
        n = len(prefix)
        return [r for r in self.index.tensors if r.path[:n] == prefix]

    def get(self, *keys: Any, default: Any = KeyError) -> Any:
        """The skeleton value at a key path; dict keys match by value or by their string form."""
        node = self.index.data
        for key in keys:
            try:
                node = _child(node, key)
            except (KeyError, IndexError, TypeError, ValueError):
                if default is KeyError:
                    raise JobError(
                        f"{self.path}: no {'/'.join(map(str, keys))!r} in the checkpoint"
                    ) from None
                return default
        return node

    # ------------------------------------------------------------------ tensors

    def tensor(self, item: TensorRecord | TensorRef) -> torch.Tensor:
        """The tensor a record (or skeleton leaf) describes, viewing the mapped file (no copy)."""
        import torch

        if isinstance(item, TensorRef):
            if item.storage is None:
                raise JobError(f"{self.path}: a {item.kind} tensor has no data in the file")
            key, name = item.storage.key, f"storage {item.storage.key}"
        else:
            if item.storage is None:
                raise JobError(f"{self.path}: tensor {item.name!r} has no data in the file")
            key, name = item.storage, f"tensor {item.name!r}"
        dtype = torch_dtype(item.dtype, f"{self.path}: {name}")
        shape = tuple(item.shape)
        numel = 1
        for d in shape:
            numel *= d
        if numel == 0:
            return torch.empty(shape, dtype=dtype)
        stride = item.stride if item.stride is not None else _contiguous_stride(shape)
        elsize = dtype.itemsize
        base = self._base(key, elsize)
        usable = base.numel() - base.numel() % elsize
        view = base[:usable].view(dtype).as_strided(shape, stride, item.storage_offset)
        start = self._offset(key)
        if start is not None and not (self.big_endian and elsize > 1):
            reach = sum((d - 1) * abs(s) for d, s in zip(shape, stride, strict=True))
            first = start + item.storage_offset * elsize
            self._touched.append((first, first + (reach + 1) * elsize))
        return view

    def byte_range(self, item: TensorRecord | TensorRef) -> tuple[int, int] | None:
        """File offset and length of a contiguous little-endian tensor's bytes (None otherwise).

        Lets a job read the values with ``pread`` straight into its own buffer.
        """
        if isinstance(item, TensorRef):
            key = item.storage.key if item.storage is not None else None
        else:
            key = item.storage
        elsize = ELEMENT_SIZE.get(item.dtype, 1)
        if key is None or self.big_endian and elsize > 1:
            return None
        start = self._offset(key)
        size = self.index.storages.get(key)
        shape = tuple(item.shape)
        if start is None or size is None or item.stride not in (None, _contiguous_stride(shape)):
            return None
        numel = 1
        for d in shape:
            numel *= d
        if item.storage_offset * elsize + numel * elsize > size:
            return None
        return start + item.storage_offset * elsize, numel * elsize

    def read_into(self, offset: int, dest: memoryview) -> None:
        """Read the file's bytes at `offset` into `dest` with ``pread`` (not the mapping: no
        page of it is mapped, so there is nothing to release afterwards)."""
        pread_exact(self._file.fileno(), dest, offset, str(self.path))

    def raw(self, item: TensorRecord | TensorRef) -> Raw | None:
        """A contiguous little-endian tensor's bytes as a view of the mapping, without torch
        (None where torch is needed: strided views, byte-swapped files, empty tensors)."""
        where = self.byte_range(item)
        if where is None or where[1] == 0 or self._map is None:
            return None
        start, size = where
        self._touched.append((start, start + size))
        return Raw(item.dtype, tuple(item.shape), memoryview(self._map)[start : start + size])

    def values(self, item: TensorRecord | TensorRef) -> Values:
        """A tensor's values to write as they are: its bytes (`raw`) where it can, else a view."""
        raw = self.raw(item)
        return raw if raw is not None else self.tensor(item)

    def release(self) -> None:
        """Give back the pages of tensors handed out so far (they are re-read if used again).

        Pages of a file mapping count in the process's resident size until dropped; a job calls
        this after each tensor it has written, so reading a 100 GB checkpoint never shows as
        100 GB resident. Sources are read-only: in-place changes to a handed-out tensor are lost.
        """
        touched, self._touched = self._touched, []
        if self._map is None or not hasattr(self._map, "madvise"):
            return
        for start, end in touched:
            lo = start - start % mmap.PAGESIZE
            hi = min(end + (-end % mmap.PAGESIZE), len(self._map))
            if hi > lo:
                self._map.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    def _base(self, key: str, elsize: int) -> torch.Tensor:
        """A storage's bytes as a uint8 tensor over the mapping (swapped once if big-endian)."""
        import torch

        swap = self.big_endian and elsize > 1
        cached = self._bases.get((key, elsize if swap else 1))
        if cached is not None:
            return cached
        if self._map is None:
            raise JobError(f"{self.path}: read after the source was closed")
        offset = self._offset(key)
        nbytes = self.index.storages.get(key)
        if offset is None or nbytes is None:
            raise JobError(f"{self.path}: storage {key!r} is not in the file")
        base = torch.frombuffer(self._map, dtype=torch.uint8, count=nbytes, offset=offset)
        if swap:
            usable = nbytes - nbytes % elsize
            base = base[:usable].view(-1, elsize).flip(1).contiguous().view(-1)
        self._bases[(key, elsize if swap else 1)] = base
        return base

    def _storage_offsets(self) -> dict[str, int]:
        fmt = self.index.format
        if fmt == "torch-legacy":
            offsets = dict(self.index.metadata.get("storage_offsets", {}))
        elif fmt == "safetensors":
            offsets = {
                r.storage: int(r.data_offset)
                for r in self.index.tensors
                if r.storage is not None and r.data_offset is not None
            }
        else:
            offsets = self._zip_offsets()
        for key in offsets:
            self._check_bounds(key, offsets[key])
        return offsets

    def _check_bounds(self, key: str, start: int) -> None:
        nbytes = self.index.storages.get(key, 0)
        if start + nbytes > self.index.size:
            raise JobError(
                f"{self.path}: storage {key!r} at byte {start} ends past the end "
                f"of the file ({self.index.size} bytes)"
            )

    def _offset(self, key: str) -> int | None:
        """Where a storage's bytes start; a zip entry's local header is read when first asked
        (a job reads the weights' few hundred headers, not the optimizer's thousands)."""
        start = self._offsets.get(key)
        if start is not None:
            return start
        info = self._headers.pop(key, None)
        if info is None:
            return None
        at = info.header_offset
        if not 0 <= at <= self.index.size - _LOCAL_HEADER.size:
            raise JobError(
                f"{self.path}: local header of {info.filename} at byte {at} is outside the file"
            )
        # pread, not the map: touching one cached page through the map can map (and count
        # as resident) the whole cached block around it, optimizer storages included.
        if self._file.closed:  # an indexed-then-closed source (many-rank merges)
            with open(self.path, "rb") as f:
                head = os.pread(f.fileno(), _LOCAL_HEADER.size, at)
        else:
            head = os.pread(self._file.fileno(), _LOCAL_HEADER.size, at)
        if len(head) < _LOCAL_HEADER.size:
            raise JobError(
                f"{self.path}: local header of {info.filename} at byte {at} is truncated"
            )
        magic, name_len, extra_len = _LOCAL_HEADER.unpack(head)
        if magic != _LOCAL_MAGIC:
            raise JobError(f"{self.path}: no local file header for {info.filename} at byte {at}")
        start = at + _LOCAL_HEADER.size + name_len + extra_len
        self._check_bounds(key, start)
        self._offsets[key] = start
        return start

    def _zip_offsets(self) -> dict[str, int]:
        root = self.index.metadata.get("root", "")
        prefix = f"{root}/data/"
        try:
            with zipfile.ZipFile(self._file) as archive:
                infos = [i for i in archive.infolist() if i.filename.startswith(prefix)]
        except zipfile.BadZipFile as exc:
            raise JobError(f"{self.path}: damaged zip archive ({exc})") from None
        wanted = set(self.index.storages)
        offsets: dict[str, int] = {}
        for info in infos:
            key = info.filename[len(prefix) :]
            if key not in wanted:
                continue
            if info.compress_type != zipfile.ZIP_STORED:
                raise JobError(
                    f"{self.path}: entry {info.filename} is compressed "
                    f"(method {info.compress_type}); torch.save stores entries "
                    "uncompressed, re-save the file to read it in place"
                )
            self._headers[key] = info  # its local header is read when first needed
        return offsets

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Let go of the mapping: it is unmapped once no tensor handed out still views it."""
        # torch.frombuffer keeps a reference to the mmap object but exports no buffer, so
        # mmap.close() would succeed and leave those tensors pointing at unmapped memory.
        self._bases.clear()
        self._map = None
        self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _child(node: Any, key: Any) -> Any:
    if isinstance(node, dict):
        if key in node:
            return node[key]
        for k, v in node.items():
            if str(k) == str(key):
                return v
        raise KeyError(key)
    if isinstance(node, (list, tuple)):
        return node[int(key)]
    if isinstance(node, OpaqueObject):
        fields = node.fields()
        if key in fields:
            return fields[key]
        return _child(getattr(node, "items", {}), key)
    raise KeyError(key)


def _contiguous_stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    stride = []
    acc = 1
    for d in reversed(shape):
        stride.append(acc)
        acc *= max(d, 1)
    return tuple(reversed(stride))
