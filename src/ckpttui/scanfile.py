"""A saved scan: the ``ckpttui inspect PATH --json`` document, browsed elsewhere (``ncdu -f``).

``ckpttui inspect /data/exp --json > scan.json`` on the server, ``ckpttui scan.json`` on a laptop:
`SavedScan` rebuilds the folder tree and the checkpoint summaries (`ckpttui.summary`) from the
document and answers the app's questions (`ckpttui.ui.listing.Listing`) without touching a disk.
Tensor names are not in the document; sizes, categories, parts, dtypes, modules, metrics and
problems are.

`scan_block` is what ``inspect --json`` adds for that under ``"scan"``: the host, the time, the
absolute root, and the sizes of the files that belong to no checkpoint (logs, scripts).
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ckpttui import __version__
from ckpttui.accounting import Breakdown
from ckpttui.browse import Entry, name_step
from ckpttui.inventory import Inventory, Plan, Unit
from ckpttui.paths import is_within
from ckpttui.records import FileIndex
from ckpttui.scan import UnitResult
from ckpttui.summary import CheckpointSummary, FileSummary

SCAN_FORMAT = 1
"""Version of the ``"scan"`` block; a newer one than this reader knows is refused."""


class ScanFileError(ValueError):
    """A file given as a saved scan is not one (or not one this version reads); names the file."""


def scan_block(plan: Plan) -> dict[str, Any]:
    """The ``"scan"`` block of ``inspect --json``: where and when, and the files outside units."""
    inv = plan.inv
    dirs = {u.path for u in plan.units if u.kind != "file"}
    files = {u.path for u in plan.units if u.kind == "file"}
    other: dict[str, int] = {}
    for path, size, _mtime, _ino in plan.stats:
        if path in files or path in inv.same_as:
            continue
        parent = os.path.dirname(path)
        while parent not in dirs and os.path.dirname(parent) != parent:
            parent = os.path.dirname(parent)
        if parent not in dirs:
            other[inv.rel(path)] = size
    return {
        "format": SCAN_FORMAT,
        "ckpttui": __version__,
        "host": socket.gethostname(),
        "scanned_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "root_abs": os.path.abspath(inv.root),
        "other_files": other,
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


def file_breakdown(f: FileSummary) -> Breakdown:
    """A file's sums as a `Breakdown` (what the Breakdown tab renders)."""
    b = Breakdown()
    for cat, sums in f.categories.items():
        if cat in b.categories:
            b.categories[cat] = dict(sums)
    b.parts = Counter(f.parts)
    b.dtypes = Counter(f.dtypes)
    b.dtype_bytes = Counter(f.dtype_bytes)
    b.modules = Counter(f.modules)
    b.tensors = f.tensors
    b.bytes = f.tensor_bytes
    b.reclaimable = f.reclaimable_bytes
    return b


@dataclass
class SavedFolderScan:
    """A `ckpttui.scan.FolderScan` from a saved scan: the checkpoints under one folder."""

    summaries: list[CheckpointSummary]
    walk_errors: list[tuple[str, str]]

    def results(self, cancelled: Callable[[], bool] | None = None) -> Iterator[UnitResult]:
        """Each checkpoint's summary, in the document's (walk) order."""
        for s in self.summaries:
            if cancelled is not None and cancelled():
                return
            yield UnitResult(Unit("dir" if self.is_folder(s) else "file", s.path), [s])

    @staticmethod
    def is_folder(s: CheckpointSummary) -> bool:
        """Whether a checkpoint is a folder (or a single file)."""
        return not s.files or any(f != s.path for f in s.files)


class SavedScan:
    """A saved ``inspect --json`` document, answering as the disk would (read-only)."""

    def __init__(
        self, source: str, head: dict[str, Any], entries: Iterable[tuple[str, Any]]
    ) -> None:
        self.source = source
        """The scan file."""
        extras = head.get("scan") if isinstance(head.get("scan"), dict) else {}
        assert isinstance(extras, dict)
        root = str(extras.get("root_abs") or head["root"])
        self.root = ("/" + root.strip("/")).rstrip("/") or "/"
        """Where the scanned folder was, on the machine that scanned it."""
        self.host: str | None = extras.get("host")
        """The machine that scanned it (None for documents written before the ``"scan"`` block)."""
        self.scanned_at: str | None = extras.get("scanned_at")
        """When, ISO 8601 UTC."""
        self.summaries: list[CheckpointSummary] = []
        """Every checkpoint, in walk order."""
        self.files: dict[str, FileSummary] = {}
        """Every read file, by absolute path."""
        self.errors: list[tuple[str, str]] = []
        self.kinds: dict[str, str] = {self.root: "dir"}
        """Every path in the scan -> ``dir``, ``checkpoint`` or ``file``."""
        self.layouts: dict[str, str] = {}
        """Layout of each checkpoint folder."""
        self.sizes: dict[str, int] = {}
        """Bytes of each file."""
        self.children: dict[str, set[str]] = {self.root: set()}
        self.totals: dict[str, int] = {}
        """Bytes under each folder."""
        self._load(entries, extras)

    def abs(self, rel: str) -> str:
        """The scanned machine's absolute path of a document path (relative to the root)."""
        return self.root if not rel else f"{self.root.rstrip('/')}/{rel}"

    def _add(self, path: str, kind: str) -> None:
        if path == self.root:
            if kind != "file":
                self.kinds[path] = kind
                return
            # A scan of one file: its folder is the root shown.
            self.root = os.path.dirname(path) or "/"
            self.kinds.setdefault(self.root, "dir")
        parent = os.path.dirname(path)
        if parent not in self.kinds and is_within(parent, self.root):
            self._add(parent, "dir")
        self.children.setdefault(parent, set()).add(path)
        if self.kinds.get(path) != "checkpoint":
            self.kinds[path] = kind
        if kind != "file":
            self.children.setdefault(path, set())

    def _load(self, entries: Iterable[tuple[str, Any]], extras: dict[str, Any]) -> None:
        root = self.root
        by_file: dict[str, CheckpointSummary] = {}
        for section, d in entries:
            if section == "checkpoints":
                s = CheckpointSummary.from_dict(d, root)
                self.summaries.append(s)
                folder = SavedFolderScan.is_folder(s)
                self._add(s.path, "checkpoint" if folder else "file")
                if folder:
                    self.layouts[s.path] = s.layout
                for path, size in zip(s.files, s.file_sizes or [0] * len(s.files)):
                    self._add(path, "file")
                    self.sizes[path] = size
                    by_file[path] = s
            elif section == "files":
                f = FileSummary.from_dict(d, root)
                self.files[f.path] = f
                if f.path in by_file:
                    by_file[f.path].files_read.append(f)
                if not self.sizes.get(f.path):  # written before checkpoints had file_sizes
                    self.sizes[f.path] = f.size
            elif section == "errors":
                self.errors.append((self.abs(d["path"]), str(d["error"])))
        other = extras.get("other_files")
        for rel, size in (other if isinstance(other, dict) else {}).items():
            path = self.abs(rel)
            if self.kinds.get(path) is None:
                self._add(path, "file")
                self.sizes[path] = _int(size)
        for path, size in self.sizes.items():  # folder totals, summed once
            while path != self.root and is_within(path, self.root):
                path = os.path.dirname(path)
                self.totals[path] = self.totals.get(path, 0) + size

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
        return self.sizes[path] if path in self.sizes else self.totals.get(path, 0)

    def _summaries_under(self, path: str) -> list[CheckpointSummary]:
        if path not in self.kinds:
            raise FileNotFoundError(f"{path}: not in the saved scan {self.source}")
        found = [s for s in self.summaries if is_within(s.path, path)]
        if not found and self.kinds[path] == "file":
            found = [s for s in self.summaries if path in s.files]
        return found

    def folder_scan(self, path: str) -> SavedFolderScan:
        """The checkpoints under a folder, as `ckpttui.scan.FolderScan` streams them."""
        return SavedFolderScan(
            self._summaries_under(path), [(p, e) for p, e in self.errors if is_within(p, path)]
        )

    def scan(self, path: str) -> Inventory:
        """The checkpoints under a path (or the one a file belongs to), as saved."""
        inv = SavedInventory(root=Path(path))
        for s in self._summaries_under(path):
            inv.checkpoints.append(s.checkpoint())
            for f in s.files_read:
                inv.files[f.path] = self._index(f)
                inv.breakdowns[f.path] = file_breakdown(f)
                inv.records[f.path] = []
                if f.layout:
                    inv.layout_of[f.path] = f.layout
        inv.errors = [(p, e) for p, e in self.errors if is_within(p, path)]
        return inv

    @staticmethod
    def _index(f: FileSummary) -> FileIndex:
        return FileIndex(
            f.path,
            f.format,
            f.size,
            globals=list(f.globals),
            unsafe_globals=list(f.unsafe_globals),
            storages={"saved": f.storage_bytes},
            metadata={"tensor_count": f.tensors},
            error=f.error,
        )

    def read_file(self, path: str) -> FileIndex:
        """A file's index without its tensors (their names are not in the scan)."""
        f = self.files.get(path)
        return FileIndex(
            path,
            f.format if f else "",
            self.sizes.get(path, 0),
            error="tensor names are not in a saved scan",
        )

    def dir_layout(self, path: str) -> str | None:
        """The layout of a checkpoint folder of the scan."""
        return self.layouts.get(path)

    def owning_checkpoint(self, path: str) -> str | None:
        """The checkpoint folder holding a file of the scan."""
        return next((s.path for s in self.summaries if path in s.files and s.path != path), None)

    def is_file(self, path: str) -> bool:
        """Whether the scan found a file there."""
        return self.kinds.get(path) == "file"

    def is_dir(self, path: str) -> bool:
        """Whether the scan found a folder there."""
        return self.kinds.get(path) in ("dir", "checkpoint")

    def title(self) -> str:
        """``read-only scan (HOST, TIME): PATH``, for the screen (the path last: it may be long)."""
        when = self.scanned_at.replace("T", " ").replace("Z", " UTC") if self.scanned_at else None
        where = ", ".join(w for w in (self.host, when) if w)
        return f"read-only scan ({where}): {self.root}" if where else f"read-only scan: {self.root}"


class _Broken(ValueError):
    """A one-entry-a-line document broken at a line (said as is, after the file's name)."""


SECTIONS = ("checkpoints", "files", "errors")
"""The document's lists, in the order `ckpttui.scan.write_json` writes them."""


def _lines(fh: IO[str]) -> tuple[dict[str, Any], Iterator[tuple[str, Any]]] | None:
    """A document as `ckpttui.scan.write_json` writes it (one entry a line), read a line at a
    time so a 50,000-checkpoint scan is never held whole; None for any other layout."""
    if fh.readline().strip() != "{":
        return None
    head: dict[str, Any] = {}
    line = fh.readline()
    try:
        while line.startswith(' "') and not line.rstrip().endswith("["):
            head.update(json.loads("{" + line.strip().rstrip(",") + "}"))
            line = fh.readline()
        first = fh.readline().strip()
        if first.startswith("{"):
            json.loads(first.rstrip(","))
    except json.JSONDecodeError:
        return None  # indented: not one entry a line
    if "root" not in head or line.strip() != '"checkpoints": [':
        return None

    def entries() -> Iterator[tuple[str, Any]]:
        section = "checkpoints"
        lines = itertools.chain([first], fh)
        for n, line in enumerate(lines, start=3 + len(head)):
            text = line.strip()
            if text.startswith("{"):
                try:
                    entry = json.loads(text.rstrip(","))
                except json.JSONDecodeError:
                    raise _Broken(f"line {n} is cut short (copied while being written?)") from None
                yield section, entry
            elif text.endswith("[") and text[1:].split('"', 1)[0] in SECTIONS:
                section = text[1:].split('"', 1)[0]
            elif text == "}":
                return
            elif text not in ("]", "],"):
                raise _Broken(f"line {n} is not a scan entry: {text[:40]!r}")
        raise _Broken("it ends early (copied while being written?)")

    return head, entries()


def _whole(doc: Any) -> tuple[dict[str, Any], Iterator[tuple[str, Any]]] | None:
    """Any other JSON layout of the same document (older ckpttui, reformatted), read whole."""
    if not isinstance(doc, dict) or not {"root", "files", "checkpoints"} <= doc.keys():
        return None
    head = {k: doc[k] for k in ("root", "scan") if k in doc}
    return head, ((name, e) for name in SECTIONS for e in doc.get(name) or [])


def load_scan(path: str) -> SavedScan:
    """Read a saved scan; raises ScanFileError naming the file when it is not one."""
    what = "expected the output of `ckpttui inspect PATH --json`"
    try:
        with open(path, encoding="utf-8") as fh:
            parts = _lines(fh)
            if parts is None:
                fh.seek(0)
                parts = _whole(json.load(fh))
            if parts is None:
                raise ScanFileError(f"{path}: not a ckpttui scan ({what})")
            head, entries = parts
            extras = head.get("scan")
            if isinstance(extras, dict) and _int(extras.get("format")) > SCAN_FORMAT:
                raise ScanFileError(
                    f"{path}: written by a newer ckpttui ({extras.get('ckpttui')}); upgrade to "
                    "open it"
                )
            return SavedScan(path, head, entries)
    except ScanFileError:
        raise
    except _Broken as exc:
        raise ScanFileError(f"{path}: {exc}") from None
    except OSError as exc:
        raise ScanFileError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ScanFileError(f"{path}: not a text file, so not a saved scan") from None
    except json.JSONDecodeError as exc:
        raise ScanFileError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as exc:
        raise ScanFileError(
            f"{path}: not a ckpttui scan ({what}; {type(exc).__name__}: {exc})"
        ) from None
