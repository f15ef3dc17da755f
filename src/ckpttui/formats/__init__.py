"""Pure readers of on-disk checkpoint formats: headers and pickles only, never tensor data, never torch."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from ckpttui.formats import dcp, safetensors, torch_legacy, torch_zip
from ckpttui.formats.errors import FormatError
from ckpttui.formats.unpickler import is_dangerous_global, is_pickle
from ckpttui.records import FileIndex

__all__ = ["FormatError", "read_file", "sniff", "is_checkpoint_name"]

_CKPT_NAME = re.compile(
    r"\.(pt|pth|bin|ckpt|tar|safetensors|pkl|pickle|th|model|distcp)(\.[A-Za-z0-9_+-]+)*$"
    r"|\.pt\.(ep\d+(\.\d+)?|avg\d+|best)$"
)
_LFS = b"version https://git-lfs.github.com/spec/v1"
_PICKLE_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def is_checkpoint_name(name: str) -> bool:
    """Whether a file name looks like a checkpoint (``.pt``, ``model.pt.ep3``, ``.safetensors``...)."""
    return bool(_CKPT_NAME.search(name)) or name == ".metadata"


def sniff(head: bytes, name: str) -> str | None:
    """Guess a file's format from its first bytes (and name); None when it is not a checkpoint."""
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")) or (
        len(head) < 4 and b"PK\x03\x04".startswith(head)
    ):
        return "torch-zip"
    if head.startswith(_PICKLE_MAGIC):
        return "torch-legacy"
    if name == ".metadata":
        return "dcp"
    if head.startswith(_LFS):
        return "git-lfs-pointer"
    if name.endswith(".safetensors") or (len(head) >= 10 and head[8:10] in (b'{"', b"{ ")):
        return "safetensors"
    if head[:1] == b"\x80" and head[1:2] in (b"\x01", b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    if is_pickle(head):
        return "pickle"  # protocol 0/1 pickles start with opcodes, not a magic number
    return None


def read_file(path: str | os.PathLike[str]) -> FileIndex:
    """Read one checkpoint file's index, or a FileIndex whose `error` names what is wrong."""
    _known_calls()
    p = Path(path)
    name = p.name
    try:
        st = p.stat()
    except OSError as exc:
        return FileIndex(str(p), "unknown", 0, error=_os_error(exc))
    size = st.st_size
    if not stat.S_ISREG(st.st_mode):
        return FileIndex(str(p), "unknown", 0, error="not a regular file (not read)")
    if size == 0:
        return FileIndex(str(p), "empty", 0, error="empty file (0 bytes)")
    try:
        with open(p, "rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError as exc:
        return FileIndex(str(p), "unknown", size, error=_os_error(exc))
    fmt = sniff(head, name)
    if fmt == "git-lfs-pointer":
        return FileIndex(
            str(p),
            fmt,
            size,
            error="git-lfs pointer, not the checkpoint itself (run `git lfs pull`)",
        )
    reader = _READERS.get(fmt or "")
    if reader is None and _is_text(head):
        # Text sidecars named like checkpoints (epoch counters, YAML state): no tensors.
        return FileIndex(str(p), "text", size)
    if reader is None:
        return FileIndex(
            str(p),
            "unknown",
            size,
            error="not a checkpoint format ckpttui knows (no zip, pickle or safetensors header)",
        )
    try:
        index = reader(p, size)
    except FormatError as exc:
        index = FileIndex(str(p), fmt or "unknown", size, error=str(exc))
        if exc.would_run:
            index.metadata["would_run"] = exc.would_run
    except OSError as exc:
        return FileIndex(str(p), fmt or "unknown", size, error=_os_error(exc))
    except Exception as exc:  # a reader bug must still cost one line on this file, not the scan
        text = " ".join(str(exc).split())[:120]
        return FileIndex(
            str(p), fmt or "unknown", size, error=f"unreadable ({type(exc).__name__}: {text})"
        )
    return judge(index)


def judge(index: FileIndex) -> FileIndex:
    """Make a file that would run code on load an error: what it calls, or names to attack with."""
    would_run = list(index.metadata.get("would_run") or [])
    named = [g for g in index.unsafe_globals if is_dangerous_global(g) and g not in would_run]
    dangerous = would_run + named
    if not dangerous:
        return index
    index.metadata["dangerous_globals"] = dangerous
    shown = ", ".join(dangerous[:4]) + (
        f" and {len(dangerous) - 4} more" if len(dangerous) > 4 else ""
    )
    problem = f"; also {index.error}" if index.error else ""
    if would_run:
        line = f"pickle would run code on load: {shown} (recorded, not executed){problem}"
    else:
        line = f"pickle would run code on load: it names {shown} (recorded, not executed){problem}"
    index.error = line[:400]
    return index


_SNIFF_BYTES = 65536


def _known_calls() -> None:
    """The layouts declare the framework enums real checkpoints call (layouts.known_calls)."""
    import ckpttui.layouts.known_calls  # noqa: F401


def _is_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _os_error(exc: OSError) -> str:
    return exc.strerror.lower() if exc.strerror else str(exc)


_READERS = {
    "torch-zip": torch_zip.read,
    "torch-legacy": torch_legacy.read,
    "pickle": torch_legacy.read_plain_pickle,
    "safetensors": safetensors.read,
    "dcp": dcp.read,
}
