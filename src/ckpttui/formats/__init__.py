"""Pure readers of on-disk checkpoint formats: headers and pickles only, never tensor data, never torch."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ckpttui.formats import dcp, safetensors, torch_legacy, torch_zip
from ckpttui.formats.errors import FormatError
from ckpttui.formats.unpickler import is_dangerous_global
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
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "torch-zip"
    if head.startswith(_PICKLE_MAGIC):
        return "torch-legacy"
    if name == ".metadata":
        return "dcp"
    if head.startswith(_LFS):
        return "git-lfs-pointer"
    if name.endswith(".safetensors") or (len(head) >= 10 and head[8:10] in (b'{"', b"{ ")):
        return "safetensors"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    return None


def read_file(path: str | os.PathLike[str]) -> FileIndex:
    """Read one checkpoint file's index, or a FileIndex whose `error` names what is wrong."""
    p = Path(path)
    name = p.name
    try:
        st = p.stat()
    except OSError as exc:
        return FileIndex(str(p), "unknown", 0, error=_os_error(exc))
    size = st.st_size
    if size == 0:
        return FileIndex(str(p), "empty", 0, error="empty file (0 bytes)")
    try:
        with open(p, "rb") as f:
            head = f.read(64)
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
        return FileIndex(str(p), fmt or "unknown", size, error=str(exc))
    except OSError as exc:
        return FileIndex(str(p), fmt or "unknown", size, error=_os_error(exc))
    dangerous = [g for g in index.unsafe_globals if is_dangerous_global(g)]
    if dangerous:
        index.metadata["dangerous_globals"] = dangerous
        index.error = (
            "pickle would run code on load: it names "
            + ", ".join(dangerous[:4])
            + " (recorded, not executed)"
        )
    return index


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
