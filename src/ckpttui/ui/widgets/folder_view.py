"""The folder view: an ncdu-style list of a folder's children, filled in by a background scan."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import DataTable, Input, Static
from textual.worker import get_current_worker

from ckpttui.browse import Entry, disk_usage, list_dir
from ckpttui.inventory import Inventory, scan
from ckpttui.ui.widgets.render import COLORS, category_bytes, stacked_bar
from ckpttui.units import human_bytes

SORTS = ("size", "name", "step")
COLUMNS = (
    ("name", "name"),
    ("size", "size"),
    ("reclaim", "reclaimable"),
    ("bar", "weights|optim|other"),
    ("weights", "weights"),
    ("optim", "optimizer"),
    ("other", "other"),
    ("step", "step"),
)
NAME_WIDTH = 30
MAX_ROWS = 1000


@dataclass
class ChildStats:
    """What the scan learnt about one child of the folder."""

    entry: Entry
    size: int = 0
    weights: int = 0
    optimizer: int = 0
    other: int = 0
    reclaimable: int = 0
    checkpoints: int = 0
    incomplete: int = 0
    errors: int = 0
    scanned: bool = False


class FolderView(Vertical):
    """Children sorted by size, each with a weights / optimizer / other bar and reclaimable bytes."""

    class Listed(Message):
        """The folder's entries are known (names and file sizes)."""

        def __init__(self, token: int, path: str, entries: list[Entry], error: str | None) -> None:
            super().__init__()
            self.token, self.path, self.entries, self.error = token, path, entries, error

    class ChildrenScanned(Message):
        """Some children have been scanned (batched in time, so a big folder is not 1000 repaints)."""

        def __init__(self, token: int, stats: list[ChildStats]) -> None:
            super().__init__()
            self.token, self.stats = token, stats

    class ScanDone(Message):
        """Every child has been scanned; carries the folder-wide inventory for the curve."""

        def __init__(self, token: int, inventory: Inventory) -> None:
            super().__init__()
            self.token, self.inventory = token, inventory

    class Open(Message):
        """The user chose a child (enter on a row)."""

        def __init__(self, path: str) -> None:
            super().__init__()
            self.path = path

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.path: str | None = None
        self.token = 0
        self.stats: dict[str, ChildStats] = {}
        self.sort_by = "size"
        self.filter_text = ""
        self.inventory: Inventory | None = None
        self._last_refill = 0.0
        self._biggest = 0
        self.base = ""
        """Paths are shown relative to this folder (the parent of the app's root)."""

    def compose(self) -> ComposeResult:
        """Totals line, filter, table."""
        yield Static("", id="folder-totals")
        yield Input(placeholder="filter names (esc to close)", id="folder-filter")
        table: DataTable[Any] = DataTable(id="folder-table", cursor_type="row", zebra_stripes=True)
        for key, label in COLUMNS:
            table.add_column(label, key=key)
        yield table

    def show(self, path: str) -> None:
        """Show a folder: list it now, scan its children in the background."""
        self.path = path
        self.token += 1
        self.stats = {}
        self.inventory = None
        self.query_one("#folder-table", DataTable).clear()
        self.query_one("#folder-totals", Static).update(
            Text(f"{self._shown(path)}  scanning...", style="dim")
        )
        self._scan(self.token, path)

    @work(thread=True, exclusive=True, exit_on_error=False, group="folder")
    def _scan(self, token: int, path: str) -> None:
        worker = get_current_worker()
        try:
            entries = list_dir(path)
        except OSError as exc:
            self.post_message(self.Listed(token, path, [], exc.strerror or str(exc)))
            return
        self.post_message(self.Listed(token, path, entries, None))
        total = Inventory(root=Path(path))
        batch: list[ChildStats] = []
        last_post = time.monotonic()
        # Files first (cheap), then folders, so the list fills in quickly.
        for entry in sorted(entries, key=lambda e: (e.kind != "file", e.name)):
            if worker.is_cancelled:
                return
            stats = ChildStats(entry, size=entry.size)
            inv = None
            if entry.error is None:
                try:
                    inv = scan(entry.path)
                except OSError:
                    inv = None
            if inv is not None:
                stats.size = disk_usage(entry.path)
                for ckpt in inv.checkpoints:
                    b = inv.checkpoint_breakdown(ckpt)
                    w, o, x = category_bytes(b)
                    stats.weights += w
                    stats.optimizer += o
                    stats.other += x
                    stats.reclaimable += b.reclaimable
                    stats.incomplete += not ckpt.complete
                stats.checkpoints = len(inv.checkpoints)
                stats.errors = len(inv.errors)
                total.checkpoints.extend(inv.checkpoints)
                total.files.update(inv.files)
                total.records.update(inv.records)
                total.errors.extend(inv.errors)
            stats.scanned = True
            batch.append(stats)
            if time.monotonic() - last_post > 0.2:
                self.post_message(self.ChildrenScanned(token, batch))
                batch, last_post = [], time.monotonic()
        self.post_message(self.ChildrenScanned(token, batch))
        self.post_message(self.ScanDone(token, total))

    @on(Listed)
    def _listed(self, message: Listed) -> None:
        if message.token != self.token:
            return
        message.stop()
        if message.error:
            self.query_one("#folder-totals", Static).update(
                Text(f"{self._shown(message.path)}: {message.error}", style="red")
            )
            return
        for entry in message.entries:
            self.stats[entry.path] = ChildStats(entry, size=entry.size)
        self._refill()

    @on(ChildrenScanned)
    def _children(self, message: ChildrenScanned) -> None:
        if message.token != self.token:
            return
        message.stop()
        for stats in message.stats:
            self.stats[stats.entry.path] = stats
        # Re-sorting rebuilds the table and moves rows under the cursor: while scanning, only for
        # small folders and at most once a second; big folders are sorted when the scan ends.
        now = time.monotonic()
        if len(self.stats) <= 100 and now - self._last_refill > 1.0:
            self._refill()
        else:
            self._update_rows(message.stats)
            self._update_totals(done=False)

    @on(ScanDone)
    def _done(self, message: ScanDone) -> None:
        if message.token != self.token:
            return
        self.inventory = message.inventory
        self._refill()
        self._update_totals(done=True)

    def _rows(self) -> list[ChildStats]:
        rows = [s for s in self.stats.values() if self.filter_text.lower() in s.entry.name.lower()]
        if self.sort_by == "size":
            rows.sort(key=lambda s: (-s.size, s.entry.name))
        elif self.sort_by == "name":
            rows.sort(key=lambda s: s.entry.name)
        else:
            rows.sort(key=lambda s: (s.entry.step is None, s.entry.step or 0, s.entry.name))
        return rows

    def _refill(self) -> None:
        table = self.query_one("#folder-table", DataTable)
        cursor_key = None
        if table.row_count and table.cursor_row < table.row_count:
            cursor_key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        # Columns too: their widths then follow what is shown now, not what was shown before.
        table.clear(columns=True)
        for key, label in COLUMNS:
            table.add_column(label, key=key)
        self._last_refill = time.monotonic()
        rows = self._rows()
        self._biggest = max((s.size for s in rows), default=0)
        # DataTable measures every row when it first renders: a 10,000-entry folder shows its
        # first MAX_ROWS in the current order; the filter reaches the rest.
        for s in rows[:MAX_ROWS]:
            table.add_row(*self._cells(s), key=s.entry.path)
        if len(rows) > MAX_ROWS:
            table.add_row(
                Text(f"... {len(rows) - MAX_ROWS} more (/ to filter)", style="dim"),
                *[""] * (len(COLUMNS) - 1),
                key="--more--",
            )
        if cursor_key is not None and cursor_key in table.rows:
            table.move_cursor(row=table.get_row_index(cursor_key))
        self._update_totals(done=False)

    def _update_rows(self, changed: list[ChildStats]) -> None:
        table = self.query_one("#folder-table", DataTable)
        for s in changed:
            if s.entry.path not in table.rows:
                continue
            for (key, _), value in zip(COLUMNS, self._cells(s)):
                table.update_cell(s.entry.path, key, value)

    def _cells(self, s: ChildStats) -> tuple[Any, ...]:
        biggest = max(self._biggest, s.size)
        e = s.entry
        label = e.name + ("/" if e.kind == "dir" else "")
        if len(label) > NAME_WIDTH:
            label = label[: NAME_WIDTH - 1] + "…"
        name = Text(label, style="bold" if e.kind != "file" else "")
        if e.kind == "checkpoint":
            name.append(f"  {e.layout}", style="cyan")
        if e.error:
            name.append(f"  {e.error}", style="red")
        if s.incomplete or s.errors:
            name.append("  !", style="bold red")
        scanned = s.scanned
        bar = (
            stacked_bar(s.weights, s.optimizer, s.other, 16, scale=max(biggest, 1))
            if scanned
            else Text("…", style="dim")
        )
        return (
            name,
            human_bytes(s.size),
            human_bytes(s.reclaimable) if scanned else "",
            bar,
            human_bytes(s.weights) if scanned else "",
            human_bytes(s.optimizer) if scanned else "",
            human_bytes(s.other) if scanned else "",
            "" if e.step is None else str(e.step),
        )

    def _update_totals(self, done: bool) -> None:
        rows = list(self.stats.values())
        size = sum(s.size for s in rows)
        optimizer = sum(s.optimizer for s in rows)
        reclaim = sum(s.reclaimable for s in rows)
        ckpts = sum(s.checkpoints for s in rows)
        bad = sum(s.incomplete for s in rows)
        pending = sum(not s.scanned for s in rows)
        text = Text.assemble(
            (f"{self._shown(self.path or '')}\n", "bold"),
            ("optimizer state: ", COLORS["optimizer"]),
            f"{human_bytes(optimizer)} of {human_bytes(size)}",
            ("   reclaimable: ", "bold"),
            human_bytes(reclaim),
            f"   {ckpts} checkpoints",
            (f"   {bad} incomplete" if bad else "", "red"),
            (f"   scanning {pending} more..." if pending and not done else "", "dim"),
            (f"   sorted by {self.sort_by}", "dim"),
        )
        self.query_one("#folder-totals", Static).update(text)

    def _shown(self, path: str) -> str:
        return os.path.relpath(path, self.base) if self.base else path

    def cycle_sort(self) -> str:
        """Sort by the next key (size, name, step)."""
        self.sort_by = SORTS[(SORTS.index(self.sort_by) + 1) % len(SORTS)]
        self._refill()
        return self.sort_by

    def open_filter(self) -> None:
        """Show and focus the filter input."""
        box = self.query_one("#folder-filter", Input)
        box.display = True
        box.focus()

    @on(Input.Changed, "#folder-filter")
    def _filter(self, event: Input.Changed) -> None:
        self.filter_text = event.value
        self._refill()

    @on(DataTable.RowSelected, "#folder-table")
    def _open(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value and event.row_key.value != "--more--":
            self.post_message(self.Open(str(event.row_key.value)))
