"""What a layout is: the protocol, the `Layout` defaults every framework module starts from, and
helpers the recognisers share. Everything ckpttui asks of a framework is asked here."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ckpttui.records import Category, Checkpoint, FileIndex

Ranked = list[tuple[Path, float]]
"""(checkpoint path, metric value) pairs, best first."""

_GENERIC_SKIP = re.compile(r"avg|average|best|last|latest|final|init", re.IGNORECASE)
_LOWER_IS_BETTER = ("loss", "wer", "cer", "err", "ppl", "perplexity", "distance")


WRITTEN_BY = "# written by ckpttui"
"""Start of the comment a folder output appends to its sidecar (see `LoaderContract.sidecar`)."""


class RankError(ValueError):
    """A run cannot be ranked or chosen from as asked; the message names the folder and the fix."""


@dataclass(frozen=True)
class LoaderContract:
    """What a slim, averaged or exported ``.pt`` must hold so that the framework's own loader
    accepts it, and how the framework's own averaging script treats its inputs."""

    keep: tuple[str, ...] | None = None
    """Top-level keys of the source kept beside the state dict; None keeps the container alone."""
    flat: bool = False
    """The loader reads a bare state dict: a wrapped source (``{"model": ...}``) is unwrapped."""
    metadata_from: str = "last"
    """Which input of an average gives the carried metadata (``first`` or ``last``)."""
    script: str = ""
    """The framework's own averaging script, if it has one (named in the job notes)."""
    integers: str = ""
    """What that script does with integer tensors (ckpttui keeps the last input's)."""
    average_name: str = "avg{n}.pt"
    """The framework's name for an average of ``n`` checkpoints."""
    folder_prefix: str = ""
    """Its loader finds checkpoint folders by this name prefix (a folder output is named so)."""
    sidecar: str = ""
    """The YAML metadata file of a checkpoint folder; a folder output appends a comment to it
    (`WRITTEN_BY`) saying what it holds, so that it is never taken for an interrupted save."""
    copies_metadata: bool = False
    """The framework's own averaging script copies one input's metadata (`metadata_from`)."""


class Layout:
    """Everything the rest of ckpttui asks of a framework, with the answers most layouts share.

    A layout module subclasses this, sets `name` and `title`, and overrides what its framework
    does differently; recognition (`claims`, `describe`) is what each one always defines.
    """

    name: str = ""
    """Registry name (``inspect --json`` ``layout``)."""
    title: str = ""
    """How users call the framework, for messages."""
    training: bool = False
    """Its checkpoints are saves of one training run (``--last``/``--best`` apply)."""
    candidate: re.Pattern[str] | None = None
    """Names of its regular training saves; None: any name without avg/best/last/latest/final/init."""
    contract: LoaderContract = LoaderContract()
    """What its loader needs from a written file."""
    weights_refusal: str | None = None
    """Why its weights cannot be read in place (a partitioned format to merge first), or None."""
    weights_in_shards: bool = False
    """A folder checkpoint whose weights are HF-style files (``model.safetensors``, shards + index)."""
    recoverables: bool = False
    """A folder of one file per module (each averaged or exported under its own file name)."""
    mergeable: bool = False
    """``merge`` consolidates it (partitioned or sharded weights)."""
    absorbs: tuple[str, ...] = ()
    """Layouts of checkpoint folders nested inside one of its folders that belong to it."""
    steps_axis: bool = False
    """Its curves are per step even when epochs are known."""
    nested_weights: bool = False
    """Tensors nested below the top level of its files are weights unless named otherwise."""
    consolidated: str = ""
    """A folder whose weights live in its optimizer files (ZeRO fp32 masters, partitioned): the
    name of the consolidated weights file reclaim writes into it before removing those ("": none)."""

    def reclaim_removes(self, name: str) -> bool:
        """Whether reclaim removes this file of a `consolidated` folder (once its weights are
        written out)."""
        return False

    def unmerged_weights(self, folder: Path) -> Path | None:
        """When a `mergeable` checkpoint folder was saved without the parts ``merge``
        consolidates, the file in it that holds the weights whole (to export instead); else None."""
        return None

    def folder_advice(self, ckpt: Checkpoint) -> tuple[str, str, str, str] | None:
        """Plain words on a checkpoint folder of this framework that loaders cannot take as it
        is: (headline, what it holds, the key to press, what the key does); None: nothing to say."""
        return None

    def file_role(self, name: str) -> Category | None:
        """A whole file's category when its name decides it for this framework, else None."""
        return None

    def is_candidate(self, ckpt: Checkpoint) -> bool:
        """Whether a checkpoint is a regular training save, never a copy, a link or an average."""
        if ckpt.info.get("symlink_to"):
            return False
        name = Path(ckpt.path).name
        if self.candidate is not None:
            return bool(self.candidate.match(name))
        return not _GENERIC_SKIP.search(name)

    def progress(self, ckpt: Checkpoint) -> float | None:
        """Training progress, for ordering: the step, else the epoch."""
        value = ckpt.step if ckpt.step is not None else ckpt.epoch
        return float(value) if value is not None else None

    def order(self, ckpt: Checkpoint) -> tuple[float, list[Any]]:
        """Sort key in training order: progress, then the name in natural order."""
        value = self.progress(ckpt)
        return (value if value is not None else -math.inf), natural_key(Path(ckpt.path).name)

    def last_pool(self, ckpts: list[Checkpoint]) -> tuple[list[Checkpoint], list[str]]:
        """The checkpoints ``--last N`` takes from (oldest first), and notes on those left out."""
        return ckpts, []

    def rank(
        self,
        ckpts: list[Checkpoint],
        siblings: list[Checkpoint],
        files: dict[str, FileIndex],
        metric: str | None,
        mode: str | None,
        root: Path,
    ) -> tuple[Ranked, str]:
        """The run's checkpoints best first by the framework's recorded metric, and the rule.

        `ckpts` are the candidates in training order; `siblings` every checkpoint of this layout
        in the run (copies included: some frameworks record the history in their latest save);
        `files` the read index of every file, by absolute path.
        """
        raise RankError(
            f"{root}: {self.title} checkpoints record no validation metric; "
            "choose the inputs, or take the last N"
        )

    def curve_x(self, ckpt: Checkpoint, by_epoch: bool) -> float | None:
        """Where a checkpoint sits on the curve's x axis."""
        value = ckpt.epoch if by_epoch else ckpt.step
        return float(value) if value is not None else None

    def curve_points(self, ckpt: Checkpoint, x: float | None) -> list[tuple[str, float, float]]:
        """(metric, x, value) points a checkpoint recorded."""
        return []

    def owns_name(self, name: str) -> bool:
        """Whether a file name alone says this framework wrote it (for files still being written)."""
        return False


class DirLayout(Protocol):
    """Recognises a folder that is one checkpoint, from its entry names alone (see `Layout`)."""

    name: str
    title: str

    def claims(self, folder: Path, names: set[str]) -> bool:
        """Whether this folder is one checkpoint of this layout."""
        ...

    def describe(self, ckpt: Checkpoint, indexes: dict[str, FileIndex]) -> None:
        """Fill step, epoch, completeness, problems and info, from names and read indexes."""
        ...


class FileLayout(Protocol):
    """Recognises a single file that is one checkpoint, from its name and unpickled skeleton."""

    name: str
    title: str

    def claims(self, path: Path, index: FileIndex | None) -> bool:
        """Whether this file is a checkpoint of this layout."""
        ...

    def describe(self, ckpt: Checkpoint, index: FileIndex | None) -> None:
        """Fill step, epoch, completeness, problems and info."""
        ...


def natural_key(text: str) -> list[Any]:
    """Sort key that orders ``ep2`` before ``ep10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def number(value: Any) -> float | None:
    """A finite float from an int or float (never a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def lower_is_better(metric: str, mode: str | None = None) -> bool:
    """Whether lower values of a metric are better (``mode`` min/max overrides the name)."""
    if mode is not None:
        return mode == "min"
    return any(word in metric.lower() for word in _LOWER_IS_BETTER)


def points(
    info: dict[str, Any], x: float | None, keys: tuple[str, ...]
) -> list[tuple[str, float, float]]:
    """(key, x, value) for each numeric `keys` entry of a checkpoint's info."""
    if x is None:
        return []
    return [(k, x, v) for k in keys if (v := number(info.get(k))) is not None]


def rank(scores: Ranked, lower: bool) -> Ranked:
    """Best first; ties keep training order (a stable sort)."""
    return sorted(scores, key=lambda item: item[1] if lower else -item[1])


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


_SCALAR = {"float32": ("<f", 4), "float64": ("<d", 8), "float16": ("<e", 2), "bfloat16": ("", 2)}


def scalars(path: str | Path, values: list[Any]) -> list[float | None]:
    """The value of each one-element float tensor in `values` (metrics kept as tensors in a
    torch zip), read from its storage bytes without torch, opening the archive once; None for
    anything else."""
    import struct
    import zipfile

    from ckpttui.formats.unpickler import TensorRef

    wanted = [
        v
        if isinstance(v, TensorRef)
        and v.storage is not None
        and v.numel == 1
        and v.dtype in _SCALAR
        else None
        for v in values
    ]
    out: list[float | None] = [None] * len(values)
    if not any(wanted):
        return out
    try:
        with zipfile.ZipFile(path) as archive:
            entries = {n.rsplit("/data/", 1)[-1]: n for n in archive.namelist() if "/data/" in n}
            for i, value in enumerate(wanted):
                if value is None or value.storage is None:
                    continue
                name = entries.get(value.storage.key)
                if name is None:
                    continue
                fmt, size = _SCALAR[value.dtype]
                start = value.storage_offset * size
                chunk = archive.read(name)[start : start + size]
                if len(chunk) != size:
                    continue
                if value.dtype == "bfloat16":
                    out[i] = number(struct.unpack("<f", b"\0\0" + chunk)[0])
                else:
                    out[i] = number(struct.unpack(fmt, chunk)[0])
    except (OSError, zipfile.BadZipFile, EOFError):
        pass
    return out


def enum_value(value: Any) -> int | None:
    """The int behind a pickled enum (``ZeroStageEnum(2)`` arrives as an opaque object), or an int."""
    from ckpttui.formats.unpickler import OpaqueObject

    if isinstance(value, OpaqueObject) and value.args:
        return as_int(value.args[0])
    return as_int(value)
