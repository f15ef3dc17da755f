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

import json
import struct
from pathlib import Path

from ckpttui.formats.errors import FormatError
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
    """Index a safetensors file from its header, checking every offset against the file size."""
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
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"header at byte 8 is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise FormatError("header at byte 8 is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    buffer_start = 8 + n
    buffer_len = size - buffer_start
    tensors = []
    storages: dict[str, int] = {}
    for name, spec in header.items():
        try:
            dtype_code = spec["dtype"]
            shape = tuple(int(d) for d in spec["shape"])
            begin, end = (int(o) for o in spec["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"tensor {name!r}: malformed header entry") from None
        if dtype_code not in DTYPES:
            raise FormatError(f"tensor {name!r}: unknown dtype {dtype_code!r}")
        numel = 1
        for d in shape:
            if d < 0:
                raise FormatError(f"tensor {name!r}: negative dimension in shape {list(shape)}")
            numel *= d
        nbytes = numel // 2 if dtype_code == "F4" else numel * SIZES[dtype_code]
        if begin < 0 or end < begin or end - begin != nbytes:
            raise FormatError(
                f"tensor {name!r}: data_offsets [{begin}, {end}] do not match "
                f"{nbytes} bytes of {DTYPES[dtype_code]}{list(shape)}"
            )
        if end > buffer_len:
            raise FormatError(
                f"tensor {name!r} ends at byte {buffer_start + end}, past the end "
                f"of the file ({size} bytes)"
            )
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
    tensors.sort(key=lambda t: t.data_offset or 0)
    return FileIndex(
        str(path),
        "safetensors",
        size,
        tensors=tensors,
        storages=storages,
        metadata={"__metadata__": meta, "header_bytes": n},
    )
