"""``torch.distributed.checkpoint`` folders: ``.metadata`` plus ``__R_I.distcp`` data files."""

from __future__ import annotations

from pathlib import Path

from ckpttui.layouts.base import Layout, number_in
from ckpttui.records import Checkpoint, FileIndex


class DCP(Layout):
    """A DCP checkpoint folder (torch/distributed/checkpoint/filesystem.py, FileSystemWriter)."""

    name = "dcp"
    title = "torch.distributed.checkpoint"
    weights_refusal = "a torch.distributed.checkpoint folder: not read in place here"

    def claims(self, folder: Path, names: set[str]) -> bool:
        """Folders with a ``.metadata`` file (data files may be missing: then it is incomplete)."""
        return ".metadata" in names

    def describe(self, ckpt: Checkpoint, indexes: dict[str, FileIndex]) -> None:
        """Incomplete when a data file the metadata names is missing or short."""
        meta = indexes.get(str(Path(ckpt.path) / ".metadata"))
        ckpt.step = number_in(r"(?:step|global_step|checkpoint)[-_]?(\d+)$", Path(ckpt.path).name)
        if meta is None or meta.error:
            ckpt.complete = False
            ckpt.problems.append(
                ".metadata could not be read" + (f": {meta.error}" if meta else "")
            )
            return
        for rel in meta.metadata.get("missing_files", []):
            ckpt.complete = False
            ckpt.problems.append(f"data file {rel} is missing")
        for line in meta.metadata.get("short_files", []):
            ckpt.complete = False
            ckpt.problems.append(f"data file {line}: truncated")
        ckpt.info["data_files"] = len(meta.metadata.get("data_files", []))
