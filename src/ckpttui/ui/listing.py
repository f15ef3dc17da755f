"""Where the app's listings come from: the disk, or a saved scan (`ckpttui scan.json`).

The tree, the folder view and the checkpoint view ask a `Listing` for a folder's entries, a
path's inventory and the like; `DiskListing` reads the disk, `ckpttui.scanfile.SavedScan`
answers from an ``inspect --json`` document, read-only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Protocol

from ckpttui.browse import Entry, dir_layout, disk_usage, list_dir
from ckpttui.formats import read_file
from ckpttui.inventory import Inventory, scan
from ckpttui.records import FileIndex
from ckpttui.scan import FolderScan, UnitResult


class FolderScanLike(Protocol):
    """What the folder view iterates: `ckpttui.scan.FolderScan`, or a saved scan's."""

    walk_errors: list[tuple[str, str]]

    def results(self, cancelled: Callable[[], bool] | None = None) -> Iterable[UnitResult]:
        """Each unit's checkpoint summaries, in walk order."""
        ...


class Listing(Protocol):
    """What the widgets read: folder entries, sizes, inventories, tensor indexes."""

    def list_dir(self, path: str) -> list[Entry]:
        """The children of a folder (raises OSError)."""
        ...

    def disk_usage(self, path: str, seen: set[tuple[int, int]] | None = None) -> int:
        """Bytes under a path."""
        ...

    def scan(self, path: str) -> Inventory:
        """The inventory of a file or folder (raises OSError)."""
        ...

    def folder_scan(self, path: str) -> FolderScanLike:
        """The checkpoint summaries under a folder, streamed (raises OSError)."""
        ...

    def read_file(self, path: str) -> FileIndex:
        """The tensor index of one file (for the tree's key view)."""
        ...

    def dir_layout(self, path: str) -> str | None:
        """The layout of a checkpoint folder, or None."""
        ...

    def owning_checkpoint(self, path: str) -> str | None:
        """The checkpoint folder a file belongs to, or None."""
        ...

    def is_file(self, path: str) -> bool:
        """Whether a path is a file."""
        ...

    def is_dir(self, path: str) -> bool:
        """Whether a path is a folder."""
        ...


class DiskListing:
    """The disk, as it is now."""

    def list_dir(self, path: str) -> list[Entry]:
        """The children of a folder (raises OSError)."""
        return list_dir(path)

    def disk_usage(self, path: str, seen: set[tuple[int, int]] | None = None) -> int:
        """Bytes of the regular files under a path, each inode once."""
        return disk_usage(path, seen)

    def scan(self, path: str) -> Inventory:
        """Read a file or folder's headers (raises OSError)."""
        return scan(path)

    def folder_scan(self, path: str) -> FolderScan:
        """Walk a folder; its summaries come from worker processes or the scan cache."""
        return FolderScan(path, light=True)

    def read_file(self, path: str) -> FileIndex:
        """Read one file's tensor index."""
        return read_file(path)

    def dir_layout(self, path: str) -> str | None:
        """The layout that claims a folder, from its entry names."""
        return dir_layout(path)

    def owning_checkpoint(self, path: str) -> str | None:
        """The checkpoint folder a file belongs to (its folder or one above), or None."""
        folder = os.path.dirname(path)
        for _ in range(3):
            if dir_layout(folder):
                return folder
            parent = os.path.dirname(folder)
            if parent == folder:
                break
            folder = parent
        return None

    def is_file(self, path: str) -> bool:
        """Whether a path is a file."""
        return os.path.isfile(path)

    def is_dir(self, path: str) -> bool:
        """Whether a path is a folder."""
        return os.path.isdir(path)


DISK = DiskListing()
"""The listing every widget uses unless the app opened a saved scan."""
