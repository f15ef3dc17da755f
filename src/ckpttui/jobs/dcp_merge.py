"""Merge a ``torch.distributed.checkpoint`` folder (FSDP/FSDP2, accelerate, trainers' sharded
``.ckpt/`` folders) into one file.

The folder's ``.metadata`` (see `ckpttui.formats.dcp`) lists, for each tensor, its global size
and dtype and its chunks (``ChunkStorageMetadata(offsets, sizes)``: where each rank's piece sits in
the whole tensor), and for each chunk where its bytes are (``storage_data[MetadataIndex(fqn,
offsets)] = _StorageInfo(relative_path, offset, length)``). Each chunk's bytes are a small
``torch.save`` zip (``filesystem.py _write_item``, ``SerializationFormat.TORCH_SAVE``; the
only format ``FileSystemReader`` reads): its ``data.pkl`` is unpickled with ckpttui's
restricted unpickler to find the storage entry, and the raw values are read with ``pread``
straight into their place in the output tensor (through a bounce buffer when the chunk is not
a contiguous block of the output, as for column shards). One output tensor is in memory at a
time; files are opened per read, so open files stay bounded whatever the number of ranks.

Keys and values are those of torch's ``dcp_to_torch_save`` (``_EmptyStateDictLoadPlanner``, which
nests each entry along ``planner_data``): the model weights are the subtree under the first
``model`` / ``state_dict`` / ``module`` key of that nesting (accelerate saves ``{"model": ...}``,
trainers' sharded FSDP ``.ckpt/`` folders ``{"model": ..., "optimizer_0": ...}`` beside a
``meta.pt`` that is left alone), keyed as in that subtree; ``with_optimizer`` writes every
tensor, keyed by its DCP name (the nested keys joined by dots). Non-tensor entries (step counts,
param_groups) are pickles this reader does not execute: they are listed, not written.
"""

from __future__ import annotations

import io
import os
import struct
import threading
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ckpttui.formats.unpickler import (
    ELEMENT_SIZE,
    OpaqueObject,
    StorageRef,
    TensorRef,
    UnpickleError,
    iter_tensors,
    restricted_load,
    storage_from_pid,
)
from ckpttui.jobs.ahead import ahead_plan
from ckpttui.jobs.events import Event, JobError
from ckpttui.jobs.output import Planned, write_planned
from ckpttui.jobs.source import pread_exact, torch_dtype
from ckpttui.jobs.st_writer import Raw, new_buffer

MODEL_KEYS = ("model", "state_dict", "module")
_LOCAL_HEADER = struct.Struct("<4s22xHH")
_MAX_PICKLE = 1 << 20


@dataclass(frozen=True)
class Chunk:
    """One saved piece of a tensor."""

    offsets: tuple[int, ...]
    """Where the piece starts in the whole tensor, per dimension."""
    sizes: tuple[int, ...]
    """The piece's shape."""
    file: Path
    """The .distcp file holding it."""
    offset: int
    """Byte offset of its torch.save blob in the file."""
    length: int
    """Length of that blob."""


@dataclass(frozen=True)
class DcpTensor:
    """One tensor of the checkpoint and its chunks."""

    fqn: str
    """DCP key (the nested keys joined by dots)."""
    path: tuple[str, ...]
    """The nesting ``dcp_to_torch_save`` gives it."""
    dtype: str
    """torch dtype name."""
    shape: tuple[int, ...]
    """Global shape."""
    chunks: tuple[Chunk, ...]
    """The pieces, as the ranks saved them."""


def _fields(obj: Any) -> dict[str, Any]:
    return obj.fields() if isinstance(obj, OpaqueObject) else {}


def _ints(value: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in (value or ()))


def read_dcp(folder: Path) -> tuple[list[DcpTensor], list[tuple[str, ...]]]:
    """Every tensor of a DCP folder (chunk locations included) and the non-tensor entries' paths.

    Tensors come in the order ``dcp_to_torch_save``'s nested dict gives them when walked.
    """
    meta_path = folder / ".metadata"
    try:
        with open(meta_path, "rb") as f:
            meta = restricted_load(f.read()).data
    except OSError as exc:
        raise JobError(f"{meta_path}: {exc.strerror or exc}") from None
    except UnpickleError as exc:
        raise JobError(f"{meta_path}: {exc}") from None
    fields = _fields(meta)
    sd_meta = fields.get("state_dict_metadata")
    storage = fields.get("storage_data")
    if not isinstance(sd_meta, dict) or not isinstance(storage, dict):
        raise JobError(f"{meta_path}: not a torch.distributed.checkpoint Metadata pickle")
    planner_data = fields.get("planner_data")
    planner: dict[Any, Any] = planner_data if isinstance(planner_data, dict) else {}
    where: dict[tuple[str, tuple[int, ...]], dict[str, Any]] = {}
    for index, info in storage.items():
        idx, inf = _fields(index), _fields(info)
        if inf.get("transform_descriptors"):
            raise JobError(
                f"{meta_path}: chunks saved through storage transforms "
                f"({inf['transform_descriptors']}) are not read by ckpttui"
            )
        where[(str(idx.get("fqn")), _ints(idx.get("offset")))] = inf
    tensors, others = [], []
    tree: dict[str, Any] = {}
    for fqn, entry in sd_meta.items():
        name = str(fqn)
        key_path = planner.get(fqn)
        path = tuple(str(k) for k in key_path) if isinstance(key_path, (tuple, list)) else (name,)
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise JobError(f"{meta_path}: entry {name!r} nests under a value")
        if not (
            isinstance(entry, OpaqueObject)
            and entry.__qualname_full__.endswith("TensorStorageMetadata")
        ):
            others.append(path)
            node[path[-1]] = None
            continue
        ef = entry.fields()
        props = ef.get("properties")
        state = props.state if isinstance(props, OpaqueObject) else None
        dtype_obj = state[0] if isinstance(state, tuple) and state else _fields(props).get("dtype")
        dtype = str(dtype_obj).removeprefix("torch.")
        shape = _ints(ef.get("size"))
        chunks = []
        for c in ef.get("chunks") or []:
            cf = _fields(c)
            offsets, sizes = _ints(cf.get("offsets")), _ints(cf.get("sizes"))
            info = where.get((name, offsets))
            if info is None or len(offsets) != len(shape) or len(sizes) != len(shape):
                raise JobError(
                    f"{meta_path}: tensor {name!r}: chunk at {list(offsets)} has no data"
                )
            for o, s, d in zip(offsets, sizes, shape, strict=True):
                if o < 0 or s < 0 or o + s > d:
                    raise JobError(
                        f"{meta_path}: tensor {name!r}: chunk {list(offsets)}+{list(sizes)} lies "
                        f"outside its shape {list(shape)}"
                    )
            rel = str(info.get("relative_path"))
            if "/" in rel or "\\" in rel or rel in ("", ".", ".."):
                raise JobError(f"{meta_path}: chunk file {rel!r} is not a file in {folder}")
            chunks.append(
                Chunk(
                    offsets,
                    sizes,
                    folder / rel,
                    int(info.get("offset") or 0),
                    int(info.get("length") or 0),
                )
            )
        numel = 1
        for d in shape:
            numel *= d
        covered = sum(_numel(c.sizes) for c in chunks)
        if covered != numel:
            raise JobError(
                f"{meta_path}: tensor {name!r}: chunks hold {covered} of its {numel} elements"
            )
        tensors.append(DcpTensor(name, path, dtype, shape, tuple(chunks)))
        node[path[-1]] = tensors[-1]
    return list(_walk(tree)), others


def _walk(tree: dict[str, Any]) -> Iterator[DcpTensor]:
    for value in tree.values():
        if isinstance(value, dict):
            yield from _walk(value)
        elif value is not None:
            yield value


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def model_subset(tensors: list[DcpTensor]) -> tuple[list[tuple[str, DcpTensor]], str | None]:
    """The model weights, keyed as in their subtree, and the subtree's prefix (None: everything)."""
    for t in tensors:
        for i, part in enumerate(t.path[:-1]):
            if part in MODEL_KEYS:
                prefix = t.path[: i + 1]
                chosen = [
                    (".".join(u.path[i + 1 :]), u) for u in tensors if u.path[: i + 1] == prefix
                ]
                return chosen, ".".join(prefix)
    return [(t.fqn, t) for t in tensors], None


class _Window(io.RawIOBase):
    """A byte range of a file, read with pread (zipfile reads the chunk's own zip through it)."""

    def __init__(self, fd: int, start: int, length: int) -> None:
        self.fd, self.start, self.length, self.pos = fd, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.length}[whence]
        self.pos = max(0, base + pos)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, b: Any) -> int:
        n = max(0, min(len(b), self.length - self.pos))
        data = os.pread(self.fd, n, self.start + self.pos)
        b[: len(data)] = data
        self.pos += len(data)
        return len(data)


def _layout(fd: int, chunk: Chunk, name: str) -> tuple[TensorRef, int]:
    """The tensor a chunk's torch.save blob holds, and the file offset of its storage bytes."""
    where = f"{chunk.file}: chunk of {name!r} at byte {chunk.offset}"
    window = _Window(fd, chunk.offset, chunk.length)
    try:
        with zipfile.ZipFile(window) as archive:
            infos = archive.infolist()
            pkl = next((i for i in infos if i.filename.endswith("/data.pkl")), None)
            if pkl is None or pkl.file_size > _MAX_PICKLE:
                raise JobError(f"{where}: not a torch.save blob")
            root = pkl.filename[: -len("data.pkl")]
            entries = {
                i.filename[len(root) + 5 :]: i
                for i in infos
                if i.filename.startswith(root + "data/")
            }
            storages: dict[str, StorageRef] = {}

            def persistent(pid: Any) -> StorageRef:
                ref = storage_from_pid(pid)
                storages[ref.key] = ref
                return ref

            data = restricted_load(archive.read(pkl), persistent).data
    except (zipfile.BadZipFile, UnpickleError, EOFError) as exc:
        raise JobError(f"{where}: {exc}") from None
    found = list(iter_tensors(data))
    if len(found) != 1 or found[0][1].storage is None:
        raise JobError(f"{where}: holds no single tensor")
    ref = found[0][1]
    assert ref.storage is not None
    info = entries.get(ref.storage.key)
    if (
        info is None
        or info.compress_type != zipfile.ZIP_STORED
        or info.file_size < ref.storage.nbytes
    ):
        raise JobError(f"{where}: storage data/{ref.storage.key} missing or compressed")
    head = os.pread(fd, _LOCAL_HEADER.size, chunk.offset + info.header_offset)
    if len(head) < _LOCAL_HEADER.size:
        raise JobError(f"{where}: truncated")
    magic, name_len, extra_len = _LOCAL_HEADER.unpack(head)
    if magic != b"PK\x03\x04":
        raise JobError(f"{where}: no local header for {info.filename}")
    start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
    if start + ref.storage.nbytes > chunk.length:
        raise JobError(f"{where}: storage runs past the chunk's {chunk.length} bytes")
    return ref, chunk.offset + start


def _block_start(shape: tuple[int, ...], chunk: Chunk) -> int | None:
    """The element where a chunk starts in the whole (row-major) tensor, if the chunk is one
    contiguous block of it (a row shard); None otherwise (column shards)."""
    dims = len(shape)
    k = 0
    while k < dims and chunk.sizes[k] == 1:
        k += 1  # leading dimensions of size 1 do not break contiguity
    for j in range(k + 1, dims):
        if chunk.offsets[j] != 0 or chunk.sizes[j] != shape[j]:
            return None
    start = 0
    for j in range(dims):
        start = start * shape[j] + chunk.offsets[j]
    return start


def _fill(out: memoryview, t: DcpTensor, chunk: Chunk) -> None:
    """Read one chunk into its place in `out`, the whole tensor's bytes: ``pread`` straight into
    it for a row shard; through a bounce buffer and torch's strided copy otherwise."""
    numel = _numel(chunk.sizes)
    if numel == 0:
        return
    try:
        fd = os.open(chunk.file, os.O_RDONLY)
    except OSError as exc:
        raise JobError(f"{chunk.file}: {exc.strerror or exc} (chunk of {t.fqn!r})") from None
    try:
        ref, start = _layout(fd, chunk, t.fqn)
        where = f"{chunk.file}: chunk of {t.fqn!r}"
        if ref.dtype != t.dtype or tuple(ref.shape) != chunk.sizes:
            raise JobError(
                f"{where}: holds {ref.dtype}{list(ref.shape)}, metadata says "
                f"{t.dtype}{list(chunk.sizes)}"
            )
        elsize = ELEMENT_SIZE[t.dtype]
        plain = ref.stride is None or ref.stride == _contiguous(chunk.sizes) or numel == 1
        at = _block_start(t.shape, chunk)
        if at is not None and plain:
            dest = out[at * elsize : (at + numel) * elsize]
            pread_exact(fd, dest, start + ref.storage_offset * elsize, where)
            return
        # Column shards and strided saves: read the chunk's storage, then copy it into place.
        import torch

        assert ref.storage is not None
        raw = bytearray(ref.storage.nbytes)
        pread_exact(fd, memoryview(raw), start, where)
        dtype = torch_dtype(t.dtype, where)
        base = torch.frombuffer(raw, dtype=torch.uint8).view(dtype)
        whole = torch.frombuffer(out, dtype=torch.uint8).view(dtype).view(t.shape)
        region = whole[
            tuple(slice(o, o + s) for o, s in zip(chunk.offsets, chunk.sizes, strict=True))
        ]
        stride = ref.stride if ref.stride is not None else _contiguous(chunk.sizes)
        region.copy_(base.as_strided(chunk.sizes, stride, ref.storage_offset))
    finally:
        os.close(fd)


def _contiguous(shape: tuple[int, ...]) -> tuple[int, ...]:
    stride, acc = [], 1
    for d in reversed(shape):
        stride.append(acc)
        acc *= max(d, 1)
    return tuple(reversed(stride))


def _assemble(t: DcpTensor, pool: ThreadPoolExecutor | None) -> Raw:
    """The whole tensor's bytes, its chunks read in parallel (no torch for row shards)."""
    if t.dtype not in ELEMENT_SIZE or t.dtype.startswith(("q", "bits")):
        torch_dtype(t.dtype, t.fqn)  # the error naming the dtype
    out = new_buffer(_numel(t.shape) * ELEMENT_SIZE[t.dtype])
    if pool is None or len(t.chunks) < 2:
        for chunk in t.chunks:
            _fill(out, t, chunk)
    else:
        for future in [pool.submit(_fill, out, t, c) for c in t.chunks]:
            future.result()
    return Raw(t.dtype, t.shape, out)


def merge_dcp(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    with_optimizer: bool = False,
    max_shard_size: int | str | None = None,
    workers: int | None = None,
    cancel: threading.Event | None = None,
    force: bool = False,
) -> Iterator[Event]:
    """Write a DCP folder's model weights (every tensor with `with_optimizer`) to one file or shards.

    Values equal torch's ``dcp_to_torch_save`` bit for bit; see the module docstring for keys.
    """
    from ckpttui.jobs.merge import _shard_size

    shard = _shard_size(max_shard_size)
    folder = Path(src)
    if not (folder / ".metadata").is_file():
        raise JobError(f"{folder}: no .metadata: not a torch.distributed.checkpoint folder")
    tensors, others = read_dcp(folder)
    if with_optimizer:
        chosen, prefix = [(t.fqn, t) for t in tensors], None
    else:
        chosen, prefix = model_subset(tensors)
    notes = []
    if prefix is not None:
        notes.append(f"model weights: the {len(chosen)} tensors under {prefix!r}")
    elif not with_optimizer:
        notes.append("no model / state_dict subtree: every tensor is written")
    if others:
        notes.append(f"{len(others)} non-tensor entries not written (e.g. {'.'.join(others[0])})")
    files = sorted({c.file for _, t in chosen for c in t.chunks})
    for path in files:
        if not path.is_file():
            raise JobError(f"{path}: missing (named by {folder / '.metadata'})")
    n_workers = max(1, workers if workers is not None else 4)
    pool = ThreadPoolExecutor(n_workers) if n_workers > 1 else None
    runner = None
    try:
        plan = [Planned(key, t.dtype, t.shape, partial(_assemble, t, pool)) for key, t in chosen]
        # the next tensor's chunks are read while this one is written (within the largest's size)
        plan, runner = ahead_plan(plan, {p.name: p.nbytes for p in plan})
        start = {
            "inputs": [str(folder / ".metadata"), *map(str, files)],
            "folder": str(folder),
            "ranks": len(files),
        }
        yield from write_planned(
            "merge-dcp",
            plan,
            out,
            inputs=[folder, *files],
            force=force,
            cancel=cancel,
            max_shard_size=shard,
            start_data=start,
            notes=notes,
        )
    finally:
        if runner is not None:
            runner.close()
        if pool is not None:
            pool.shutdown()
