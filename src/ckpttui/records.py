"""The shared vocabulary: small frozen records that readers, layouts, accounting and the UI pass around."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


def shape_numel(shape: tuple[int, ...]) -> int:
    """Number of elements of a tensor of this shape (1 for a 0-d tensor)."""
    n = 1
    for d in shape:
        n *= d
    return n


class Category(str, enum.Enum):
    """What a tensor is for, from the point of view of someone who wants to run the model."""

    WEIGHTS = "weights"
    OPTIMIZER = "optimizer"
    OTHER = "other"


CATEGORIES: tuple[Category, ...] = (Category.WEIGHTS, Category.OPTIMIZER, Category.OTHER)


@dataclass(frozen=True)
class TensorRecord:
    """One named tensor found in a file, described without reading its data."""

    name: str
    """Path of keys from the top of the file, joined by '/' (``state_dict/encoder.w``)."""
    path: tuple[str, ...]
    """The same path as separate keys."""
    dtype: str
    """torch dtype name without the ``torch.`` prefix (``float32``, ``bfloat16``)."""
    shape: tuple[int, ...]
    """Tensor shape."""
    nbytes: int
    """numel x element size: the bytes this tensor's values take."""
    storage: str | None = None
    """Key of the storage that holds the values (torch files); None where each tensor has its own."""
    storage_offset: int = 0
    """Offset into the storage, in elements."""
    stride: tuple[int, ...] | None = None
    """Strides in elements (torch files); None for contiguous formats."""
    data_offset: int | None = None
    """Absolute byte offset of the first element in the file, where the format gives one."""
    category: Category = Category.OTHER
    """Set by accounting."""
    part: str = ""
    """Finer part within the category (``exp_avg``, ``master``, ``lora``, ``ema`` ...)."""

    @property
    def numel(self) -> int:
        """Number of elements."""
        return shape_numel(self.shape)


@dataclass(frozen=True)
class Opaque:
    """Placeholder for an object the restricted unpickler would not build (see formats.unpickler)."""

    cls: str


@dataclass
class FileIndex:
    """What a reader learnt about one file: its tensors, its globals, its plain-data skeleton."""

    path: str
    """Absolute path."""
    format: str
    """``torch-zip``, ``torch-legacy``, ``safetensors``, ``dcp``, ``pickle``, ``text``..."""
    size: int
    """Bytes on disk."""
    tensors: list[TensorRecord] = field(default_factory=list)
    """Named tensors in the order met."""
    storages: dict[str, int] = field(default_factory=dict)
    """Distinct storages: key -> bytes."""
    globals: list[str] = field(default_factory=list)
    """Every global the pickle names, sorted."""
    unsafe_globals: list[str] = field(default_factory=list)
    """Globals that are neither plain data nor torch's rebuild functions, sorted."""
    data: Any = None
    """The unpickled skeleton: dicts, lists and scalars, with TensorRef and opaque objects as leaves."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Format-level metadata (safetensors ``__metadata__``, torch zip version...)."""
    error: str | None = None
    """One line naming the problem, when the file could not be read."""

    @property
    def storage_bytes(self) -> int:
        """Bytes of distinct storages: what the file spends on tensor data."""
        return sum(self.storages.values())


@dataclass
class Checkpoint:
    """A logical checkpoint: one file or a folder of files, recognised by a layout."""

    path: str
    """Absolute path of the file or folder."""
    layout: str
    """The registry name of the layout that recognised it (``ckpttui.layouts.layout_named``)."""
    files: list[str] = field(default_factory=list)
    """Absolute paths of the files that belong to it."""
    step: int | None = None
    """Optimizer step (global step) where known."""
    epoch: int | None = None
    """Epoch where known."""
    complete: bool = True
    """False when a part is missing or the checkpoint is still being written."""
    problems: list[str] = field(default_factory=list)
    """One line each: why it is incomplete, or what looks wrong."""
    info: dict[str, Any] = field(default_factory=dict)
    """Framework metadata worth showing (metrics, ZeRO stage, world size...)."""
