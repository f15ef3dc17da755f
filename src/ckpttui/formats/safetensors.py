"""Reader for safetensors headers (huggingface/safetensors README, "Format")::

    8 bytes     N, unsigned little-endian 64-bit: length of the header
    N bytes     UTF-8 JSON: {"<name>": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]},
                             "__metadata__": {"<str>": "<str>"}}
    rest        the byte buffer; offsets are relative to its start, tensors are contiguous,
                little-endian, and do not overlap

Our own reader rather than ``safetensors.safe_open``: it imports in no time, gives errors with byte
offsets, and needs only the header (one read of N bytes).
"""

from __future__ import annotations

import struct
from pathlib import Path

from ckpttui.formats.errors import FormatError
from ckpttui.formats.sidecar import SidecarError, loads_json
from ckpttui.records import FileIndex, TensorRecord

MAX_HEADER = 100 * 1024 * 1024  # the reference implementation refuses headers above 100 MB

DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
    "U16": "uint16",
    "U32": "uint32",
    "U64": "uint64",
    "C64": "complex64",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E8M0": "float8_e8m0fnu",
    "F4": "float4_e2m1fn_x2",
}
SIZES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "U16": 2,
    "U32": 4,
    "U64": 8,
    "C64": 8,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
}


def read(path: Path, size: int) -> FileIndex:
    """Index a safetensors file from its header, checking every entry as the reference does.

    Shapes and offsets must be non-negative integers; each tensor's byte count must be
    numel x itemsize; tensors must tile the byte buffer exactly, without gaps or overlaps.
    """
    if size < 8:
        raise FormatError(f"file is {size} bytes: too short for a safetensors header length")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > MAX_HEADER or 8 + n > size:
            raise FormatError(
                f"header length {n} at byte 0 is larger than the file ({size} bytes)"
                if 8 + n > size
                else f"header length {n} exceeds {MAX_HEADER} bytes"
            )
        raw = f.read(n)
    try:
        header = loads_json(raw, max_depth=4)
    except SidecarError as exc:
        raise FormatError(f"header at byte 8 is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise FormatError("header at byte 8 is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise FormatError("__metadata__ is not a map of strings to strings")
    buffer_start = 8 + n
    buffer_len = size - buffer_start
    tensors = []
    storages: dict[str, int] = {}
    spans: list[tuple[int, int, str]] = []
    for name, spec in header.items():
        label = name if len(name) <= 80 else name[:77] + "..."
        if not isinstance(spec, dict):
            raise FormatError(f"tensor {label!r}: malformed header entry")
        dtype_code = spec.get("dtype")
        shape_raw = spec.get("shape")
        offsets = spec.get("data_offsets")
        if not isinstance(dtype_code, str) or dtype_code not in DTYPES:
            raise FormatError(f"tensor {label!r}: unknown dtype {str(dtype_code)[:20]!r}")
        if not isinstance(shape_raw, list) or not all(_is_count(d) for d in shape_raw):
            raise FormatError(f"tensor {label!r}: shape is not a list of non-negative integers")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_is_count(o) for o in offsets)
        ):
            raise FormatError(f"tensor {label!r}: data_offsets is not two non-negative integers")
        shape = tuple(shape_raw)
        begin, end = offsets
        numel = 1
        for d in shape:
            numel *= d
            if numel > 8 * buffer_len + 8:
                break  # already larger than the file could hold: stop multiplying
        if dtype_code == "F4":
            if numel % 2:
                raise FormatError(f"tensor {label!r}: F4 packs two values a byte, numel is odd")
            nbytes = numel // 2
        else:
            nbytes = numel * SIZES[dtype_code]
        if end < begin or end - begin != nbytes:
            raise FormatError(
                f"tensor {label!r}: data_offsets [{begin}, {end}] do not match "
                f"{nbytes if nbytes <= buffer_len else 'more than the file'} bytes "
                f"of {DTYPES[dtype_code]}"
            )
        if end > buffer_len:
            raise FormatError(
                f"tensor {label!r} ends at byte {buffer_start + end}, past the end "
                f"of the file ({size} bytes)"
            )
        spans.append((begin, end, label))
        tensors.append(
            TensorRecord(
                name=name,
                path=(name,),
                dtype=DTYPES[dtype_code],
                shape=shape,
                nbytes=nbytes,
                storage=name,
                data_offset=buffer_start + begin,
            )
        )
        storages[name] = nbytes
    spans.sort()
    at = 0
    for begin, end, label in spans:
        if begin != at:
            raise FormatError(
                f"tensor {label!r} starts at buffer byte {begin}, expected {at}: "
                + ("overlaps the previous tensor" if begin < at else "gap in the buffer")
            )
        at = end
    if at != buffer_len:
        raise FormatError(
            f"tensors cover {at} bytes of a {buffer_len}-byte buffer: "
            + ("truncated or padded" if at < buffer_len else "truncated")
        )
    tensors.sort(key=lambda t: t.data_offset or 0)
    return FileIndex(
        str(path),
        "safetensors",
        size,
        tensors=tensors,
        storages=storages,
        metadata={"__metadata__": meta, "header_bytes": n},
    )


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < (1 << 63)
