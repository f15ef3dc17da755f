"""Reader for ``torch.distributed.checkpoint`` folders (torch/distributed/checkpoint/filesystem.py).

A DCP checkpoint is a folder::

    .metadata          pickle of ``metadata.Metadata``:
                         state_dict_metadata  {fqn: TensorStorageMetadata(properties=TensorProperties
                                               (dtype, layout, ...), size=torch.Size, chunks=[...)])
                                               | BytesStorageMetadata()}
                         storage_data         {MetadataIndex(fqn, offset, index):
                                               _StorageInfo(relative_path, offset, length)}
                         planner_data         {fqn: (key, key, ...)}   the nested path of each fqn
    __<rank>_<n>.distcp  the bytes: raw tensor chunks and pickled non-tensor values

The classes are dataclasses pickled as NEWOBJ + BUILD, so their fields arrive as the BUILD state;
TensorProperties pickles its fields as a tuple (dtype, layout, requires_grad, memory_format, pin).
Only ``.metadata`` is read; data files are stat'ed to check that every chunk lies inside one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ckpttui.formats.errors import FormatError
from ckpttui.formats.torch_legacy import _mapped
from ckpttui.formats.torch_zip import judge_saved_bytes, with_would_run
from ckpttui.formats.unpickler import (
    ELEMENT_SIZE,
    MAX_INT64,
    OpaqueObject,
    PickleReader,
    UnpickleError,
)
from ckpttui.records import FileIndex, TensorRecord

MAX_BYTES_JUDGED = 256 * 1024 * 1024  # non-tensor values (optimizer steps, rng states) are small


def _fields(obj: Any) -> dict[str, Any]:
    return obj.fields() if isinstance(obj, OpaqueObject) else {}


def _count(value: Any, what: str) -> int:
    """A non-negative int field of the metadata, or a FormatError naming it."""
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_INT64:
        raise FormatError(f"{what} is {str(value)[:30]!r}, not a non-negative integer")
    return value


def read(path: Path, size: int) -> FileIndex:
    """Index a DCP folder from its ``.metadata``: every tensor of the checkpoint, and missing data."""
    buf = _mapped(path)
    try:
        result = PickleReader(buf).load()
    except UnpickleError as exc:
        raise FormatError(str(exc), exc.would_run) from None
    finally:
        buf.close()
    meta = result.data
    if not isinstance(meta, OpaqueObject) or not meta.__qualname_full__.endswith(".Metadata"):
        raise FormatError("not a torch.distributed.checkpoint Metadata pickle", result.would_run)
    fields = meta.fields()
    sd_meta = fields.get("state_dict_metadata")
    if not isinstance(sd_meta, dict):
        raise FormatError("Metadata has no state_dict_metadata", result.would_run)
    planner_data = fields.get("planner_data")
    planner: dict[Any, Any] = planner_data if isinstance(planner_data, dict) else {}
    tensors: list[TensorRecord] = []
    storages: dict[str, int] = {}
    nontensors: list[str] = []
    for fqn, entry in sd_meta.items():
        name = str(fqn)
        if not isinstance(entry, OpaqueObject) or not entry.__qualname_full__.endswith(
            "TensorStorageMetadata"
        ):
            nontensors.append(name)
            continue
        ef = entry.fields()
        props = ef.get("properties")
        state = props.state if isinstance(props, OpaqueObject) else None
        if isinstance(state, tuple) and state:
            dtype_obj = state[0]
        else:
            dtype_obj = _fields(props).get("dtype", "torch.float32")
        dtype = str(dtype_obj).removeprefix("torch.")[:40]
        dims = ef.get("size") or ()
        if not isinstance(dims, (tuple, list)) or len(dims) > 64:
            raise FormatError(f"{name[:60]}: size is not a tuple of integers")
        shape = tuple(_count(d, f"{name[:60]}: a dimension") for d in dims)
        numel = 1
        for d in shape:
            numel *= d
        if numel > MAX_INT64:
            raise FormatError(f"{name[:60]}: shape {list(shape)} is too large")
        nbytes = numel * ELEMENT_SIZE.get(dtype, 1)
        key_path = planner.get(fqn)
        tpath = tuple(str(k) for k in key_path) if isinstance(key_path, (tuple, list)) else (name,)
        tensors.append(
            TensorRecord(
                name="/".join(tpath),
                path=tpath,
                dtype=dtype,
                shape=shape,
                nbytes=nbytes,
                storage=name,
            )
        )
        storages[name] = nbytes
    # Check each data file is there and long enough for the chunks it should hold.
    need: dict[str, int] = {}
    storage_data = fields.get("storage_data")
    byte_entries: list[tuple[str, int, int]] = []
    if isinstance(storage_data, dict):
        for index, info in storage_data.items():
            sf = _fields(info)
            rel = sf.get("relative_path")
            if isinstance(rel, str):
                if "/" in rel or "\0" in rel or rel in ("", ".", ".."):
                    raise FormatError(f"storage_data names {rel[:60]!r}, not a file of the folder")
                offset = _count(sf.get("offset"), f"{rel[:60]}: offset")
                length = _count(sf.get("length"), f"{rel[:60]}: length")
                need[rel] = max(need.get(rel, 0), offset + length)
                if str(_fields(index).get("fqn")) in nontensors:
                    byte_entries.append((rel, length, offset))
    missing, short = [], []
    folder = path.parent
    for rel, end in sorted(need.items()):
        try:
            have = os.stat(folder / rel).st_size
        except OSError:
            missing.append(rel)
            continue
        if have < end:
            short.append(f"{rel} has {have} bytes, chunks need {end}")
    would_run = list(result.would_run)
    left = MAX_BYTES_JUDGED
    for rel, length, offset in byte_entries:
        # dcp.load hands each non-tensor value to torch.load(weights_only=False)
        if length > left:
            raise FormatError(f"{rel}: over {MAX_BYTES_JUDGED} bytes of pickled values", would_run)
        left -= length
        try:
            with open(folder / rel, "rb") as f:
                f.seek(offset)
                chunk = f.read(length)
        except OSError:
            continue
        would_run += judge_saved_bytes(chunk)
    return FileIndex(
        str(path),
        "dcp",
        size,
        tensors=tensors,
        storages=storages,
        globals=sorted(result.globals),
        unsafe_globals=result.unsafe_globals,
        data=None,
        metadata=with_would_run(
            {
                "data_files": sorted(need),
                "missing_files": missing,
                "short_files": short,
                "non_tensor_entries": nontensors,
            },
            would_run,
        ),
    )
