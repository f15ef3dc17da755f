"""A saved scan: the ``ckpttui inspect PATH --json`` document, browsed elsewhere (``ncdu -f``).

``ckpttui inspect /data/exp --json > scan.json`` on the server, ``ckpttui scan.json`` on a laptop:
`SavedScan` rebuilds the folder tree, the checkpoints and their breakdowns from the document and
answers the app's questions (`ckpttui.ui.listing.Listing`) without touching a disk. Tensor names
are not in the document; sizes, categories, parts, dtypes, modules, metrics and problems are.

`scan_extras` adds what the document needs for that to ``inspect --json`` under ``"scan"``: the
host, the time, the absolute root, every file's size, and each file's bytes by dtype and module.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckpttui import __version__
from ckpttui.accounting import Breakdown
from ckpttui.browse import Entry, name_step
from ckpttui.inventory import Inventory
from ckpttui.records import Checkpoint, FileIndex

SCAN_FORMAT = 1
"""Version of the ``"scan"`` block; a newer one than this reader knows is refused."""


class ScanFileError(ValueError):
    """A file given as a saved scan is not one (or not one this version reads); names the file."""


def scan_extras(inv: Inventory) -> dict[str, Any]:
    """The ``"scan"`` block of ``inspect --json``: where and when, the size of every file met,
    and each read file's bytes by dtype and module."""
    sizes: dict[str, int] = {}
    details: dict[str, dict[str, dict[str, int]]] = {}
    for f in inv.inodes:  # every regular file met, checkpoint or not (logs, scripts, `latest`)
        if f in inv.same_as:
            continue
        try:
            sizes[inv.rel(f)] = os.stat(f).st_size
        except OSError:
            continue
    for path in inv.records:
        if path in inv.same_as:
            continue
        b = inv.file_breakdown(path)
        details[inv.rel(path)] = {
            "dtype_bytes": dict(sorted(b.dtype_bytes.items())),
            "modules": dict(b.modules.most_common(12)),
        }
    return {
        "format": SCAN_FORMAT,
        "ckpttui": __version__,
        "host": socket.gethostname(),
        "scanned_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "root_abs": os.path.abspath(inv.root),
        "file_sizes": sizes,
        "file_details": details,
    }


def is_scan_path(path: str) -> bool:
    """Whether the app was given a scan file rather than something to browse (``*.json`` file)."""
    return path.endswith(".json") and os.path.isfile(path)


@dataclass
class SavedInventory(Inventory):
    """An inventory rebuilt from a saved scan: breakdowns come from the document, not records."""

    breakdowns: dict[str, Breakdown] = field(default_factory=dict)
    """Sums of each file, by absolute path."""

    def file_breakdown(self, path: str) -> Breakdown:
        """Sums for one file, as saved."""
        saved = self.breakdowns.get(path)
        out = Breakdown()
        if saved is not None:
            out.merge(saved)
        return out


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _counter(value: Any) -> Counter[str]:
    if not isinstance(value, dict):
        return Counter()
    return Counter({str(k): _int(v) for k, v in value.items()})


def _breakdown(entry: dict[str, Any], extra: dict[str, Any]) -> Breakdown:
    b = Breakdown()
    cats = entry.get("categories")
    for cat, sums in (cats if isinstance(cats, dict) else {}).items():
        if cat in b.categories and isinstance(sums, dict):
            b.categories[cat] = {
                "tensors": _int(sums.get("tensors")),
                "bytes": _int(sums.get("bytes")),
            }
    b.parts = _counter(entry.get("parts"))
    b.dtypes = _counter(entry.get("dtypes"))
    b.dtype_bytes = _counter(extra.get("dtype_bytes"))
    b.modules = _counter(extra.get("modules"))
    b.tensors = sum(c["tensors"] for c in b.categories.values())
    b.bytes = _int(entry.get("tensor_bytes"))
    b.reclaimable = _int(entry.get("reclaimable_bytes"))
    return b


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


class SavedScan:
    """A saved ``inspect --json`` document, answering as the disk would (read-only)."""

    def __init__(self, source: str, doc: dict[str, Any]) -> None:
        self.source = source
        """The scan file."""
        extras = doc.get("scan") if isinstance(doc.get("scan"), dict) else {}
        assert isinstance(extras, dict)
        root = extras.get("root_abs") or doc["root"]
        self.root = "/" + str(root).strip("/") if not str(root).startswith("/") else str(root)
        """Where the scanned folder was, on the machine that scanned it."""
        self.root = self.root.rstrip("/") or "/"
        self.host: str | None = extras.get("host")
        """The machine that scanned it (None for documents written before the ``"scan"`` block)."""
        self.scanned_at: str | None = extras.get("scanned_at")
        """When, ISO 8601 UTC."""
        self.checkpoints: list[Checkpoint] = []
        self.files: dict[str, FileIndex] = {}
        self.breakdowns: dict[str, Breakdown] = {}
        self.layout_of: dict[str, str] = {}
        self.errors: list[tuple[str, str]] = []
        self.kinds: dict[str, str] = {self.root: "dir"}
        """Every path in the scan -> ``dir``, ``checkpoint`` or ``file``."""
        self.layouts: dict[str, str] = {}
        self.sizes: dict[str, int] = {}
        """Bytes of each file; a checkpoint's bytes not attributed to a file sit on its path."""
        self.children: dict[str, set[str]] = {self.root: set()}
        self._load(doc, extras)

    def abs(self, rel: str) -> str:
        """The scanned machine's absolute path of a document path (relative to the root)."""
        return self.root if not rel else f"{self.root.rstrip('/')}/{rel}"

    def _add(self, path: str, kind: str) -> None:
        if path == self.root:
            if kind == "file":  # a scan of one file: its folder is the root shown
                self.root = os.path.dirname(path) or "/"
                self.kinds.setdefault(self.root, "dir")
                self.children.pop(path, None)
            else:
                self.kinds[path] = kind
                return
        parent = os.path.dirname(path)
        if parent not in self.kinds and _under(parent, self.root):
            self._add(parent, "dir")
        self.children.setdefault(parent, set()).add(path)
        if self.kinds.get(path) != "checkpoint":
            self.kinds[path] = kind
        if kind != "file":
            self.children.setdefault(path, set())

    def _load(self, doc: dict[str, Any], extras: dict[str, Any]) -> None:
        sizes = extras.get("file_sizes") if isinstance(extras.get("file_sizes"), dict) else {}
        details = extras.get("file_details") if isinstance(extras.get("file_details"), dict) else {}
        assert isinstance(sizes, dict) and isinstance(details, dict)
        for f in doc["files"]:
            path = self.abs(f["path"])
            extra = details.get(f["path"], {})
            self.breakdowns[path] = _breakdown(f, extra if isinstance(extra, dict) else {})
            self.files[path] = FileIndex(
                path,
                str(f.get("format") or ""),
                _int(f.get("size")),
                globals=list(f.get("globals") or []),
                unsafe_globals=list(f.get("unsafe_globals") or []),
                storages={"saved": _int(f.get("storage_bytes"))},
                metadata={"tensor_count": _int(f.get("tensors"))},
                error=f.get("error"),
            )
            if f.get("layout"):
                self.layout_of[path] = str(f["layout"])
        for c in doc["checkpoints"]:
            path = self.abs(c["path"])
            files = [self.abs(f) for f in c["files"]]
            ckpt = Checkpoint(
                path,
                str(c["layout"]),
                files=files,
                step=c.get("step"),
                epoch=c.get("epoch"),
                complete=bool(c.get("complete", True)),
                problems=[str(p) for p in c.get("problems") or []],
                info=dict(c.get("info") or {}),
            )
            self.checkpoints.append(ckpt)
            folder = not files or any(f != path for f in files)
            self._add(path, "checkpoint" if folder else "file")
            if folder:
                self.layouts[path] = ckpt.layout
            known = 0
            for f, rel in zip(files, c["files"]):
                self._add(f, "file")
                size = sizes.get(rel, self.files[f].size if f in self.files else 0)
                self.sizes[f] = _int(size)
                known += self.sizes[f]
            rest = _int(c.get("size")) - known
            if rest > 0:
                self.sizes[path] = self.sizes.get(path, 0) + rest
        for rel, size in sizes.items():  # files outside any checkpoint
            path = self.abs(rel)
            if path not in self.sizes and self.kinds.get(path) != "checkpoint":
                self._add(path, "file")
                self.sizes[path] = _int(size)
        for e in doc.get("errors") or []:
            self.errors.append((self.abs(e["path"]), str(e["error"])))

    # --- the Listing protocol (ckpttui.ui.listing) ---------------------------------------------

    def list_dir(self, path: str) -> list[Entry]:
        """The children of a folder of the scan."""
        if path not in self.children or self.kinds.get(path) == "file":
            raise FileNotFoundError(f"{path}: not in the saved scan {self.source}")
        out = []
        for child in self.children[path]:
            kind = self.kinds[child]
            name = os.path.basename(child)
            out.append(
                Entry(
                    name,
                    child,
                    kind,
                    self.layouts.get(child),
                    size=self.sizes.get(child, 0) if kind == "file" else 0,
                    step=name_step(name),
                )
            )
        out.sort(key=lambda x: (x.kind not in ("dir", "checkpoint"), x.name))
        return out

    def disk_usage(self, path: str, seen: set[tuple[int, int]] | None = None) -> int:
        """Bytes under a path, as the scan found them."""
        return sum(size for p, size in self.sizes.items() if _under(p, path))

    def scan(self, path: str) -> Inventory:
        """The checkpoints under a path (or the one a file belongs to), as saved."""
        if path not in self.kinds:
            raise FileNotFoundError(f"{path}: not in the saved scan {self.source}")
        ckpts = [c for c in self.checkpoints if _under(c.path, path)]
        if not ckpts and self.kinds[path] == "file":
            ckpts = [c for c in self.checkpoints if path in c.files]
        inv = SavedInventory(root=Path(path))
        for c in ckpts:
            inv.checkpoints.append(c)
            for f in c.files:
                if f in self.files:
                    inv.files[f] = self.files[f]
                    inv.breakdowns[f] = self.breakdowns[f]
                    inv.records[f] = []
                if f in self.layout_of:
                    inv.layout_of[f] = self.layout_of[f]
        inv.errors = [(p, e) for p, e in self.errors if _under(p, path)]
        return inv

    def read_file(self, path: str) -> FileIndex:
        """A file's index without its tensors (their names are not in the scan)."""
        index = self.files.get(path) or FileIndex(path, "", self.sizes.get(path, 0))
        return FileIndex(
            path, index.format, index.size, error="tensor names are not in a saved scan"
        )

    def dir_layout(self, path: str) -> str | None:
        """The layout of a checkpoint folder of the scan."""
        return self.layouts.get(path)

    def owning_checkpoint(self, path: str) -> str | None:
        """The checkpoint folder holding a file of the scan."""
        return next((c.path for c in self.checkpoints if path in c.files and c.path != path), None)

    def is_file(self, path: str) -> bool:
        """Whether the scan found a file there."""
        return self.kinds.get(path) == "file"

    def is_dir(self, path: str) -> bool:
        """Whether the scan found a folder there."""
        return self.kinds.get(path) in ("dir", "checkpoint")

    def title(self) -> str:
        """``read-only scan of PATH from HOST at TIME``, for the screen."""
        text = f"read-only scan of {self.root}"
        if self.host:
            text += f" from {self.host}"
        if self.scanned_at:
            text += f" at {self.scanned_at.replace('T', ' ').replace('Z', ' UTC')}"
        return text


def load_scan(path: str) -> SavedScan:
    """Read a saved scan; raises ScanFileError naming the file when it is not one."""
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except OSError as exc:
        raise ScanFileError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ScanFileError(f"{path}: not a text file, so not a saved scan") from None
    except json.JSONDecodeError as exc:
        raise ScanFileError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    what = "expected the output of `ckpttui inspect PATH --json`"
    if not isinstance(doc, dict) or not {"root", "files", "checkpoints"} <= doc.keys():
        raise ScanFileError(f"{path}: not a ckpttui scan ({what})")
    extras = doc.get("scan")
    if isinstance(extras, dict) and _int(extras.get("format")) > SCAN_FORMAT:
        raise ScanFileError(
            f"{path}: written by a newer ckpttui ({extras.get('ckpttui')}); upgrade to open it"
        )
    try:
        return SavedScan(path, doc)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ScanFileError(
            f"{path}: not a ckpttui scan ({what}; {type(exc).__name__}: {exc})"
        ) from None
