"""Streaming safetensors writer: the header from a plan, then each tensor's bytes as it comes.

``safetensors.torch.save_file`` needs the whole state dict in memory at once. The format does not:
(huggingface/safetensors README, "Format")::

    8 bytes   N, u64 little-endian
    N bytes   JSON {"<name>": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]},
                    "__metadata__": {"<str>": "<str>"}}, padded with spaces to a multiple of 8
    rest      the tensors' bytes, contiguous, little-endian, in header order, no gaps

so given the names, dtypes and shapes up front the header can be written first and each tensor
appended when it is ready; only one tensor is held at a time. Every name gets its own bytes
(safetensors refuses aliased storage), so callers write tied weights once per name.

Sharded outputs follow transformers' ``save_pretrained``: greedy shards in order up to
``max_shard_size`` (a tensor larger than that gets a shard of its own), named
``model-00001-of-0000N.safetensors``, with ``model.safetensors.index.json``
(``{"metadata": {"total_size": ...}, "weight_map": {name: file}}``); a single shard is
``model.safetensors`` with no index.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Union

from ckpttui.formats.safetensors import DTYPES
from ckpttui.formats.unpickler import ELEMENT_SIZE
from ckpttui.jobs.events import JobError
from ckpttui.records import shape_numel

if TYPE_CHECKING:
    import torch

ST_DTYPE: dict[str, str] = {name: code for code, name in DTYPES.items() if code != "F4"}
"""torch dtype name -> safetensors dtype code (``float32`` -> ``F32``)."""
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
DEFAULT_METADATA = {"format": "pt"}  # transformers refuses safetensors files without it
PARALLEL_HASH = 1 << 20
"""Buffers at least this large are hashed in a second thread while they are written."""


@dataclass(frozen=True)
class Raw:
    """A tensor's values as contiguous little-endian bytes, with its dtype name and shape.

    What a job hands the writers where the values are copied unchanged (same dtype, contiguous
    in the input): the bytes go from the input to the output without torch.
    """

    dtype: str
    """torch dtype name (``float32``)."""
    shape: tuple[int, ...]
    """Its shape."""
    data: memoryview
    """Exactly its bytes."""


Values = Union["torch.Tensor", Raw]
"""What the writers take for one tensor: a torch tensor, or its bytes (`Raw`)."""


def new_buffer(nbytes: int) -> memoryview:
    """A writable buffer for one tensor's bytes, to be filled (``pread``) and then written.

    Large ones are anonymous mappings: not zeroed by a pass over them (``bytearray`` is), and
    given back to the system as soon as the last view goes, so freed tensors never pile up in
    the heap.
    """
    if nbytes < PARALLEL_HASH:
        return memoryview(bytearray(nbytes))
    # private: a shared anonymous mapping is tmpfs-backed, several times slower to fault in
    return memoryview(mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE))


class BufferPool:
    """Buffers for tensors' bytes, reused from one tensor to the next.

    Every page of a fresh mapping is faulted in and zeroed when first written: 0.2 s per 400 MB
    here, more than the copy that fills it (0.06 s). A job that fills one buffer per tensor and
    hands it to a writer takes it from a pool instead. A buffer is free again once nothing refers
    to it (the writer has written it and dropped every view of it), which CPython's reference
    count tells exactly; the pool holds at most `limit` bytes of buffers (others in use are
    allocated on their own, as `new_buffer` does).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buffers: list[mmap.mmap] = []
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> memoryview:
        """A writable buffer of exactly `nbytes` (its contents are left over from earlier use)."""
        if nbytes < PARALLEL_HASH:
            return memoryview(bytearray(nbytes))
        with self._lock:
            buffers = self._buffers
            # referred to by the list and getrefcount's argument only: nobody views it
            free = [i for i in range(len(buffers)) if sys.getrefcount(buffers[i]) == 2]
            fits = [i for i in free if len(buffers[i]) >= nbytes]
            if fits:
                best = min(fits, key=lambda i: len(buffers[i]))
                return memoryview(buffers[best])[:nbytes]
            size = -(-nbytes // PARALLEL_HASH) * PARALLEL_HASH
            total = sum(len(b) for b in buffers)
            for i in reversed(free):  # free buffers too small for this one make room for it
                if total + size <= self.limit:
                    break
                total -= len(buffers[i])
                del buffers[i]
            buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
            if total + size <= self.limit:
                buffers.append(buf)
            return memoryview(buf)[:nbytes]


_hasher: ThreadPoolExecutor | None = None
_SYNC_FILE_RANGE_WRITE = 2
_sync_file_range: Any = None


def start_writeback(fd: int, offset: int) -> None:
    """Have the kernel start writing the file's dirty pages from `offset` on to disk, without
    waiting (Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``; nothing elsewhere).

    Pages written and left dirty are only written out by the final ``fsync``, after all the
    work: 428 MB took 0.10 s to write and then 0.19 s to fsync here; started as it is written,
    the disk works while the job computes and the fsync finds 7 ms of work left.
    """
    global _sync_file_range
    if _sync_file_range is None:
        _sync_file_range = False
        if sys.platform.startswith("linux"):
            import ctypes

            try:
                func = ctypes.CDLL(None, use_errno=True).sync_file_range
            except AttributeError:
                pass
            else:
                func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
                _sync_file_range = func
    if _sync_file_range:
        _sync_file_range(fd, offset, 0, _SYNC_FILE_RANGE_WRITE)  # a hint: errors are ignored


def _hash_thread() -> ThreadPoolExecutor:
    global _hasher
    if _hasher is None:
        _hasher = ThreadPoolExecutor(1, thread_name_prefix="ckpttui-sha256")
    return _hasher


class HashingFile:
    """A binary file that hashes (sha256) every byte written, in order, and never seeks back.

    A large buffer is hashed in a second thread while the write runs (hashlib and the write both
    release the GIL), and `write` returns once both are done, so the caller may then reuse or
    release the buffer's memory.
    """

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.name = getattr(f, "name", "output")
        self._hash = hashlib.sha256()
        self._pos = f.tell()
        try:
            self._fd: int | None = f.fileno()
        except (AttributeError, OSError, ValueError):  # not a file on disk (BytesIO)
            self._fd = None
        self._unsynced = self._pos  # where the pages not yet sent to the disk start

    def write(self, data: bytes | memoryview) -> int:
        """Write and hash `data`; once a MiB or more is written, start writing it to disk."""
        size = len(data) if isinstance(data, bytes) else data.nbytes
        if size >= PARALLEL_HASH:
            # a MiB at a time: each piece is written and hashed while it is in the CPU's cache
            # (whole 4 MiB buffers: 0.45-1.1 s per 400 MB from a mapped input, pieces 0.45-0.5 s)
            view = memoryview(data).cast("B")
            pending = None
            try:
                for lo in range(0, size, PARALLEL_HASH):
                    piece = view[lo : lo + PARALLEL_HASH]
                    pending = _hash_thread().submit(self._hash.update, piece)
                    self.f.write(piece)
            finally:
                if pending is not None:
                    pending.result()  # the thread hashes in order: every piece is done
        else:
            self.f.write(data)
            self._hash.update(data)
        self._pos += size
        if self._fd is not None and self._pos - self._unsynced >= PARALLEL_HASH:
            self.f.flush()
            start_writeback(self._fd, self._unsynced)
            self._unsynced = self._pos - self._pos % mmap.PAGESIZE
        return size

    def tell(self) -> int:
        """Bytes written so far (from where the file was when wrapped)."""
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        """Only to where it is (what `zipfile` does before its central directory)."""
        if (pos, whence) not in ((self._pos, 0), (0, 1)):
            raise OSError("a hashed output is written in order: it cannot seek")
        return self._pos

    def flush(self) -> None:
        """Flush the file."""
        self.f.flush()

    def hexdigest(self) -> str:
        """sha256 of everything written."""
        return self._hash.hexdigest()


@dataclass(frozen=True)
class TensorSpec:
    """A tensor to be written: its name, torch dtype name and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        """Bytes of its values."""
        return ELEMENT_SIZE.get(self.dtype, 1) * shape_numel(self.shape)


def header_bytes(specs: Sequence[TensorSpec], metadata: dict[str, str] | None = None) -> bytes:
    """The 8-byte length and the space-padded JSON header for tensors written in `specs` order."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for spec in specs:
        code = ST_DTYPE.get(spec.dtype)
        if code is None:
            raise JobError(f"tensor {spec.name!r}: safetensors has no dtype for {spec.dtype}")
        if spec.name in header or spec.name == "__metadata__":
            raise JobError(f"tensor name {spec.name!r} appears twice")
        header[spec.name] = {
            "dtype": code,
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def tensor_bytes(tensor: Values) -> memoryview:
    """A tensor's values as contiguous little-endian bytes (no copy when already contiguous)."""
    if isinstance(tensor, Raw):
        return tensor.data.cast("B") if tensor.data.format != "B" else tensor.data
    import torch

    flat = tensor.detach().contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return flat.view(torch.uint8).numpy().data


def dtype_shape(tensor: Values) -> tuple[str, tuple[int, ...]]:
    """The dtype name and shape of a tensor or `Raw` values."""
    if isinstance(tensor, Raw):
        return tensor.dtype, tensor.shape
    return str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape)


def next_planned(
    specs: Sequence[TensorSpec], index: int, name: str, tensor: Values, where: str
) -> TensorSpec:
    """The spec at `index`, checked against the tensor the writer was given (a JobError if not)."""
    if index >= len(specs):
        raise JobError(f"{where}: tensor {name!r} was not planned")
    spec = specs[index]
    dtype, shape = dtype_shape(tensor)
    if spec.name != name or spec.dtype != dtype or spec.shape != shape:
        raise JobError(
            f"{where}: expected {spec.name!r} {spec.dtype}{list(spec.shape)}, "
            f"got {name!r} {dtype}{list(shape)}"
        )
    if isinstance(tensor, Raw) and tensor.data.nbytes != spec.nbytes:
        raise JobError(
            f"{where}: tensor {name!r} has {tensor.data.nbytes} bytes, planned {spec.nbytes}"
        )
    return spec


class SafetensorsWriter:
    """Writes one safetensors file to an open binary file, tensor by tensor, hashing as it goes."""

    def __init__(
        self,
        f: BinaryIO,
        specs: Sequence[TensorSpec],
        metadata: dict[str, str] | None = None,
        name: str = "",
    ) -> None:
        self.f = f
        self.specs = list(specs)
        self.name = name or getattr(f, "name", "output")
        self._out = HashingFile(f)
        self._next = 0
        self.bytes_written = 0
        self._emit(header_bytes(self.specs, metadata))

    def _emit(self, data: bytes | memoryview) -> None:
        self.bytes_written += self._out.write(data)

    @property
    def done(self) -> bool:
        """Whether every planned tensor has been written."""
        return self._next == len(self.specs)

    def write(self, name: str, tensor: Values) -> int:
        """Append the next planned tensor's bytes; returns how many were written."""
        next_planned(self.specs, self._next, name, tensor, self.name)
        data = tensor_bytes(tensor)
        self._emit(data)
        self._next += 1
        return len(data)

    def finish(self) -> str:
        """Check every tensor was written, flush, and return the file's sha256."""
        if not self.done:
            raise JobError(
                f"{self.name}: {len(self.specs) - self._next} planned tensors were never written"
            )
        self.f.flush()
        return self._out.hexdigest()


def plan_shards(specs: Sequence[TensorSpec], max_shard_size: int) -> list[list[TensorSpec]]:
    """Split tensors in order into shards of at most `max_shard_size` bytes (like transformers)."""
    shards: list[list[TensorSpec]] = []
    current: list[TensorSpec] = []
    size = 0
    for spec in specs:
        if spec.nbytes > max_shard_size:
            if current:
                shards.append(current)
            shards.append([spec])
            current, size = [], 0
            continue
        if current and size + spec.nbytes > max_shard_size:
            shards.append(current)
            current, size = [], 0
        current.append(spec)
        size += spec.nbytes
    if current or not shards:
        shards.append(current)
    return shards


def shard_names(count: int, stem: str = "model", ext: str = "safetensors") -> list[str]:
    """``model-00001-of-00002.safetensors``...; one shard is ``model.safetensors``."""
    if count == 1:
        return [f"{stem}.{ext}"]
    return [f"{stem}-{i:05d}-of-{count:05d}.{ext}" for i in range(1, count + 1)]


def index_bytes(shards: Sequence[tuple[str, Sequence[TensorSpec]]]) -> bytes:
    """``model.safetensors.index.json`` content, formatted as transformers writes it."""
    weight_map = {spec.name: fname for fname, specs in shards for spec in specs}
    total = sum(spec.nbytes for _, specs in shards for spec in specs)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    return (json.dumps(index, indent=2, sort_keys=True) + "\n").encode("utf-8")


class ShardedWriter:
    """Writes planned tensors into a folder as safetensors shards plus index, one file at a time."""

    def __init__(
        self,
        folder: str | os.PathLike[str],
        specs: Sequence[TensorSpec],
        max_shard_size: int,
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.metadata = metadata
        groups = plan_shards(specs, max_shard_size)
        self.shards = list(zip(shard_names(len(groups)), groups, strict=True))
        self.hashes: dict[str, str] = {}
        self.bytes_written = 0
        self._shard = -1
        self._file: BinaryIO | None = None
        self._writer: SafetensorsWriter | None = None

    def write(self, name: str, tensor: Values) -> int:
        """Append the next planned tensor, moving on to the next shard when one is full."""
        while self._writer is None or self._writer.done:
            self._open_next()
        assert self._writer is not None
        return self._writer.write(name, tensor)

    def _open_next(self) -> None:
        self._close_current()
        self._shard += 1
        if self._shard >= len(self.shards):
            raise JobError(f"{self.folder}: more tensors than planned")
        fname, specs = self.shards[self._shard]
        self._file = open(self.folder / fname, "wb")  # noqa: SIM115 - closed per shard
        self._writer = SafetensorsWriter(self._file, specs, self.metadata, name=fname)

    def _close_current(self) -> None:
        if self._writer is not None and self._file is not None:
            fname = self.shards[self._shard][0]
            self.hashes[fname] = self._writer.finish()
            self.bytes_written += self._writer.bytes_written
            self._file.close()
            self._writer, self._file = None, None

    def finish(self) -> dict[str, str]:
        """Close the last shard (and write empty ones), write the index; return sha256 per file."""
        while self._shard < len(self.shards) - 1:
            self._open_next()
        self._close_current()
        if len(self.shards) > 1:
            data = index_bytes(self.shards)
            with open(self.folder / INDEX_NAME, "wb") as f:
                f.write(data)
            self.hashes[INDEX_NAME] = hashlib.sha256(data).hexdigest()
            self.bytes_written += len(data)
        return self.hashes

    def close(self) -> None:
        """Close any open shard file without checking (on failure)."""
        if self._file is not None:
            self._file.close()
            self._file, self._writer = None, None
