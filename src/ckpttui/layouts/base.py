"""What a layout recogniser is: a tiny protocol, and helpers the recognisers share."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Protocol

from ckpttui.records import Checkpoint, FileIndex


class DirLayout(Protocol):
    """Recognises a folder that is one checkpoint, from its entry names alone."""

    name: str

    def claims(self, folder: Path, names: set[str]) -> bool:
        """Whether this folder is one checkpoint of this layout."""
        ...

    def describe(self, ckpt: Checkpoint, indexes: dict[str, FileIndex]) -> None:
        """Fill step, epoch, completeness, problems and info, from names and read indexes."""
        ...


class FileLayout(Protocol):
    """Recognises a single file that is one checkpoint, from its name and unpickled skeleton."""

    name: str

    def claims(self, path: Path, index: FileIndex | None) -> bool:
        """Whether this file is a checkpoint of this layout."""
        ...

    def describe(self, ckpt: Checkpoint, index: FileIndex | None) -> None:
        """Fill step, epoch, completeness, problems and info."""
        ...


def read_json(path: Path) -> tuple[Any, str | None]:
    """Parse a small JSON sidecar; (None, error line) when it cannot be read."""
    from ckpttui.formats import sidecar

    try:
        return sidecar.read_json(path), None
    except (FileNotFoundError, sidecar.SidecarError) as exc:
        return None, sidecar.describe_error(path, exc)


def read_yaml(path: Path) -> tuple[Any, str | None]:
    """Parse a YAML sidecar safely; (None, error line) when it cannot be read.

    Python-object tags (``!!python/object:numpy.float64`` from a ``yaml.dump`` of numpy metrics)
    are read as the plain mapping, sequence or scalar under the tag, never constructed.
    Bounded: regular files only, size cap, alias and depth limits (formats.sidecar).
    """
    from ckpttui.formats import sidecar

    try:
        return sidecar.read_yaml(path), None
    except (FileNotFoundError, sidecar.SidecarError) as exc:
        return None, sidecar.describe_error(path, exc)


def read_small_text(path: Path) -> str | None:
    """A short text sidecar (``counter.ckpt``, ``latest``), or None when it cannot be read."""
    from ckpttui.formats import sidecar

    try:
        return sidecar.read_text(path)
    except (FileNotFoundError, sidecar.SidecarError):
        return None


def number_in(pattern: str, text: str) -> int | None:
    """The first group of `pattern` in `text` as an int, or None."""
    m = re.search(pattern, text)
    return int(m.group(1)) if m else None


def plain(value: Any) -> Any:
    """A JSON-friendly copy of small metadata (numbers, strings, short lists and dicts)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in list(value.items())[:50]}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value[:50]]
    return str(value)


def as_int(value: Any) -> int | None:
    """An int from an int-like value (a float that is whole, a numeric string), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 40:
        return int(value.strip())
    return None


def dig(data: Any, *keys: str) -> Any:
    """``data[k1][k2]...`` through dicts and opaque objects' fields, or None."""
    from ckpttui.formats.unpickler import OpaqueObject

    node = data
    for key in keys:
        if isinstance(node, OpaqueObject):
            node = node.fields() or node.items
        if isinstance(node, dict) and key in node:
            node = node[key]
        else:
            return None
    return node


def check_index(folder: Path, index_name: str, ckpt: Checkpoint) -> None:
    """Mark `ckpt` incomplete when a shard listed in an HF ``*.index.json`` is missing."""
    data, err = read_json(folder / index_name)
    if err:
        ckpt.problems.append(err)
        ckpt.complete = False
        return
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        ckpt.problems.append(f"{index_name} has no weight_map")
        ckpt.complete = False
        return
    missing = sorted({s for s in weight_map.values() if not (folder / str(s)).is_file()})
    if missing:
        ckpt.complete = False
        ckpt.problems.append(
            f"{index_name} lists {len(missing)} missing shard(s): "
            + ", ".join(missing[:3])
            + (" ..." if len(missing) > 3 else "")
        )


def enum_value(value: Any) -> int | None:
    """The int behind a pickled enum (``ZeroStageEnum(2)`` arrives as an opaque object), or an int."""
    from ckpttui.formats.unpickler import OpaqueObject

    if isinstance(value, OpaqueObject) and value.args:
        return as_int(value.args[0])
    return as_int(value)
