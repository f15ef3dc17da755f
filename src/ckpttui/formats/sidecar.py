"""Bounded readers for the small text files beside checkpoints (JSON, YAML, plain text).

A sidecar is read only when it is a regular file (a FIFO, ``/dev/zero`` or a device named
``trainer_state.json`` is refused without being opened for long) and under a size cap. Parsed
values are checked for nesting depth, for shared references (YAML aliases expand when walked)
and for integers too large to print. Every failure is a `SidecarError` with a one-line message.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from ckpttui.formats.errors import FormatError

MAX_JSON_BYTES = 64 * 1024 * 1024  # trainer_state.json of a long run is a few MB
MAX_YAML_BYTES = 4 * 1024 * 1024  # hyper-parameter files; PyYAML parses ~1 MB/s
MAX_TEXT_BYTES = 64 * 1024  # a step counter, a `latest` tag file
MAX_DEPTH = 64
MAX_NODES = 2_000_000
MAX_ALIASES = 1000
MAX_INT_DIGITS = 80


class SidecarError(FormatError):
    """A sidecar could not be read or parsed; the message is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(str(message)[:300])


def read_bytes(path: str | os.PathLike[str], cap: int) -> bytes:
    """The bytes of a regular file of at most `cap` bytes; SidecarError otherwise.

    Opened non-blocking, so a FIFO cannot hang the open; checked with fstat on the opened file.
    Raises FileNotFoundError when the file is missing (callers say "missing" themselves).
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise SidecarError(exc.strerror.lower() if exc.strerror else str(exc)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SidecarError("not a regular file (not read)")
        if st.st_size > cap:
            raise SidecarError(f"{st.st_size} bytes: larger than the {cap}-byte limit (not read)")
        chunks = []
        left = cap + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > cap:
            raise SidecarError(f"grows past the {cap}-byte limit while read (not read)")
        return data
    except OSError as exc:
        raise SidecarError(exc.strerror.lower() if exc.strerror else str(exc)) from None
    finally:
        os.close(fd)


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise SidecarError(f"integer of {len(text)} digits refused")
    return int(text)


def loads_json(raw: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON with bounded depth and integer size; SidecarError on any problem."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
        value = json.loads(text, parse_int=_parse_int)
    except SidecarError:
        raise
    except UnicodeDecodeError as exc:
        raise SidecarError(f"not UTF-8 (byte {exc.start})") from None
    except RecursionError:
        raise SidecarError(f"nests more than {max_depth} levels deep") from None
    except ValueError as exc:  # JSONDecodeError included
        raise SidecarError(str(exc)) from None
    check_tree(value, max_depth)
    return value


def check_tree(value: Any, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES) -> None:
    """SidecarError when `value` nests deeper than `max_depth`, expands (shared references
    walked as a tree) to more than `max_nodes` nodes, or holds an integer too large to print."""
    sizes: dict[int, tuple[int, int]] = {}
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(value, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        kids = (
            [*node.keys(), *node.values()]
            if isinstance(node, dict)
            else list(node)
            if isinstance(node, (list, tuple, set))
            else None
        )
        if kids is None:
            if isinstance(node, int) and node.bit_length() > MAX_INT_DIGITS * 4:
                raise SidecarError(f"integer of {node.bit_length()} bits refused")
            continue
        if done:
            on_path.discard(key)
            depth, nodes = 0, 1
            for kid in kids:
                got = sizes.get(id(kid))
                if got is not None:
                    depth = max(depth, got[0])
                    nodes = min(nodes + got[1], max_nodes + 1)
                else:
                    nodes += 1
            if depth + 1 > max_depth:
                raise SidecarError(f"nests more than {max_depth} levels deep")
            if nodes > max_nodes:
                raise SidecarError(f"expands to more than {max_nodes} values (shared references)")
            sizes[key] = (depth + 1, nodes)
            continue
        if key in sizes or key in on_path:
            continue
        if len(on_path) >= max_depth:
            raise SidecarError(f"nests more than {max_depth} levels deep")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((kid, False) for kid in kids)


def read_json(path: str | os.PathLike[str], cap: int = MAX_JSON_BYTES) -> Any:
    """A JSON sidecar's value (bounded as above); FileNotFoundError or SidecarError."""
    return loads_json(read_bytes(path, cap))


def read_text(path: str | os.PathLike[str], cap: int = MAX_TEXT_BYTES) -> str:
    """A short text sidecar (``counter.ckpt``, ``latest``); FileNotFoundError or SidecarError."""
    raw = read_bytes(path, cap)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SidecarError(f"not UTF-8 (byte {exc.start})") from None


def loads_yaml(raw: bytes | str) -> Any:
    """Parse YAML safely: SafeLoader, python tags read as the plain data under them, aliases
    counted, depth and expansion bounded; SidecarError on any problem."""
    import yaml

    _check_brackets(raw)
    try:
        loader = _loader_class()(raw)
        try:
            value = loader.get_single_data()
        finally:
            loader.dispose()
    except SidecarError:
        raise
    except RecursionError:
        raise SidecarError(f"nests more than {MAX_DEPTH} levels deep") from None
    except yaml.YAMLError as exc:
        raise SidecarError(str(exc).splitlines()[0] if str(exc) else "invalid YAML") from None
    except (ValueError, TypeError, OverflowError, UnicodeError) as exc:
        raise SidecarError(f"invalid YAML value ({type(exc).__name__})") from None
    check_tree(value, MAX_DEPTH)
    return value


def read_yaml(path: str | os.PathLike[str], cap: int = MAX_YAML_BYTES) -> Any:
    """A YAML sidecar's value (see `loads_yaml`); FileNotFoundError or SidecarError."""
    return loads_yaml(read_bytes(path, cap))


_BRACKETS = re.compile(rb"[\[\]{}]")


def _check_brackets(raw: bytes | str) -> None:
    """Refuse flow-style nesting deeper than MAX_DEPTH before PyYAML (pure Python) parses it."""
    data = raw.encode("utf-8", "replace") if isinstance(raw, str) else raw
    depth = 0
    for m in _BRACKETS.finditer(data):
        if m.group() in (b"[", b"{"):
            depth += 1
            if depth > MAX_DEPTH:
                raise SidecarError(f"nests more than {MAX_DEPTH} levels deep")
        elif depth:
            depth -= 1


_LOADER: type | None = None


def _loader_class() -> type:
    """SafeLoader that reads unknown (python) tags as plain data and limits aliases."""
    global _LOADER
    if _LOADER is not None:
        return _LOADER
    import yaml

    class Loader(yaml.SafeLoader):
        aliases = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):  # type: ignore[no-untyped-call]
                self.aliases += 1
                if self.aliases > MAX_ALIASES:
                    raise SidecarError(f"more than {MAX_ALIASES} aliases (refused)")
            return super().compose_node(parent, index)  # type: ignore[no-untyped-call]

    def construct_any(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
        if isinstance(node, yaml.MappingNode):
            return loader.construct_mapping(node, deep=True)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node, deep=True)
        return loader.construct_scalar(node)  # type: ignore[arg-type]

    Loader.add_multi_constructor("", construct_any)  # type: ignore[no-untyped-call]
    _LOADER = Loader
    return Loader


def describe_error(path: Path, exc: BaseException) -> str:
    """The one-line problem for a sidecar that could not be read."""
    if isinstance(exc, FileNotFoundError):
        return f"{path.name} is missing"
    return f"{path.name}: {exc}"
