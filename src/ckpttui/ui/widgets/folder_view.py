"""The folder view: an ncdu-style list of a folder's children, filled in by a background scan."""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import DataTable, Input, Static
from textual.worker import Worker, WorkerState, get_current_worker

from ckpttui.browse import Entry
from ckpttui.curves import checkpoint_metric
from ckpttui.inventory import Inventory
from ckpttui.records import Checkpoint
from ckpttui.scancache import remember_view, remembered_view
from ckpttui.ui.health import HealthBook
from ckpttui.ui.listing import DISK, DiskListing, Listing
from ckpttui.ui.widgets.render import COLORS, GLYPHS, stacked_bar
from ckpttui.units import human_bytes

SORTS = ("size", "reclaimable", "name", "step", "metric")
MAX_ROWS = 1000
SIZE_W = 9
"""``1023.9 MiB`` is 10 cells; sizes are right-aligned in 9 (``999.9 GiB``)."""


@dataclass(frozen=True)
class Column:
    """A column of the list: its key, header, width, and whether it may be dropped."""

    key: str
    label: str
    width: int
    optional: bool = True


NAME_MIN = 12
BAR_MIN, BAR_MAX = 8, 16
OPTIONAL = (
    Column("weights", "weights", SIZE_W),
    Column("metric", "metric", 9),
    Column("optim", "optimizer", SIZE_W),
    Column("other", "other", SIZE_W),
    Column("step", "step", 6),
)
HEALTH = Column("health", "health", 12)
"""Shown once a verify job of this session looked at something in the folder."""
PAD = 2
"""Cells a DataTable adds around each column."""


def plan_columns(width: int, health: bool = False) -> list[Column]:
    """Columns that fit `width` cells: name, size, reclaimable and the bar first, then the rest.

    With `health`, the verify verdict is the first optional column.
    """
    fixed = [Column("size", "size", SIZE_W, False), Column("reclaim", "reclaim", SIZE_W, False)]
    used = NAME_MIN + BAR_MIN + sum(c.width for c in fixed) + PAD * 4
    extra: list[Column] = []
    for col in ((HEALTH,) if health else ()) + OPTIONAL:
        # An optional column only when the name keeps room to breathe (NAME_MIN + 12).
        if used + col.width + PAD + 12 <= width:
            extra.append(col)
            used += col.width + PAD
    slack = max(0, width - used)
    bar = BAR_MIN + min(slack // 3, BAR_MAX - BAR_MIN)
    name = NAME_MIN + max(0, slack - (bar - BAR_MIN))
    name = min(name, 60)
    return [
        Column("name", "name", name, False),
        *fixed,
        Column("bar", "bar", bar, False),
        *extra,
    ]


def elide(text: str, width: int) -> str:
    """Shorten in the middle (``model.pt…ep12``), so both ends of a name stay readable."""
    if len(text) <= width:
        return text
    if width <= 1:
        return text[:width]
    head = (width - 1) - (width - 1) // 2
    tail = width - 1 - head
    return text[:head] + "…" + (text[-tail:] if tail else "")


def natural_key(name: str) -> tuple[Any, ...]:
    """Sort key for names with numbers in them: ep2 before ep10, case ignored."""
    return tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part)
        for part in re.split(r"(\d+)", name.casefold())
        if part
    )


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
    metric: tuple[str, float] | None = None
    """The metric the framework recorded for this checkpoint (name, value), if one."""


_REMEMBERED = (
    "size",
    "weights",
    "optimizer",
    "other",
    "reclaimable",
    "checkpoints",
    "incomplete",
    "errors",
)


def _remember(stats: ChildStats) -> dict[str, Any]:
    """What a complete scan learnt of a child, to be shown at once on the next visit."""
    row: dict[str, Any] = {k: getattr(stats, k) for k in _REMEMBERED}
    row["kind"], row["listed"], row["metric"] = stats.entry.kind, stats.entry.size, stats.metric
    return row


def _recall(entry: Entry, row: Any) -> ChildStats | None:
    """The child as the last complete scan left it, if it is still the same kind and size."""
    if (
        not isinstance(row, dict)
        or row.get("kind") != entry.kind
        or row.get("listed") != entry.size
    ):
        return None
    try:
        stats = ChildStats(entry, scanned=True)
        for k in _REMEMBERED:
            setattr(stats, k, int(row[k]))
        metric = row.get("metric")
        if metric is not None:
            stats.metric = (str(metric[0]), float(metric[1]))
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    return stats


def _child_of(top: str, path: str) -> str:
    """The child of folder `top` that `path` is in (or is)."""
    prefix = top + os.sep
    if path.startswith(prefix) and ".." not in path:  # the common case, without relpath
        return prefix + path[len(prefix) :].split(os.sep, 1)[0]
    rel = os.path.relpath(path, top)
    return os.path.join(top, rel.split(os.sep, 1)[0])


class FolderTable(DataTable[Any]):
    """The list: enter or right drills in, left or backspace goes up, vim keys move."""

    BINDINGS = [
        Binding("right,l", "select_cursor", "Open", show=False),
        Binding("left,h,backspace", "up", "Up", show=False),
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
    ]

    class Up(Message):
        """The user asked for the parent folder."""

    def action_up(self) -> None:
        """Go to the parent folder."""
        self.post_message(self.Up())


class FolderView(Vertical):
    """Children sorted by size, each with a weights / optimizer / other bar and reclaimable bytes."""

    BINDINGS = [Binding("escape", "clear_filter", "Clear filter", show=False)]

    sort_by: reactive[str] = reactive("size", init=False)
    """``size``, ``reclaimable``, ``name`` or ``step``."""
    reverse: reactive[bool] = reactive(False, init=False)
    """Smallest (or last) first."""
    filter_text: reactive[str] = reactive("", init=False)
    """Only names containing this (case ignored) are listed and counted."""

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

    class Remembered(Message):
        """The rows the last complete scan of this folder left (shown while it is checked)."""

        def __init__(self, token: int, stats: list[ChildStats]) -> None:
            super().__init__()
            self.token, self.stats = token, stats

    class ScanDone(Message):
        """Every child has been scanned; carries the folder-wide inventory for the curve."""

        def __init__(self, token: int, inventory: Inventory) -> None:
            super().__init__()
            self.token, self.inventory = token, inventory

    class Open(Message):
        """The user chose a child (enter or right on a row)."""

        def __init__(self, path: str) -> None:
            super().__init__()
            self.path = path

    class Up(Message):
        """The user asked for the parent of the folder shown."""

        def __init__(self, path: str) -> None:
            super().__init__()
            self.path = path

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.path: str | None = None
        self.token = 0
        self.stats: dict[str, ChildStats] = {}
        self.inventory: Inventory | None = None
        self.scan_error: str | None = None
        self.cursor_path: str | None = None
        """The row the user is on, kept across re-sorts and reloads (None: the first row)."""
        self.columns: list[Column] = plan_columns(80)
        self._last_refill = 0.0
        self._biggest = 0
        self.base = ""
        """Paths are shown relative to this folder (the parent of the app's root)."""
        self.health = HealthBook()
        """Verdicts of this session's verify jobs (the app shares one book with its views)."""
        self.listing: Listing = DISK
        """Where children are listed and scanned from (the disk, or a saved scan)."""
        self.writing: set[str] = set()
        """Children that moved at the last live poll (shown as being written)."""
        self.live = ""
        """``live``, ``paused`` or '' (a saved scan): said on the totals line."""
        self.remembered = False
        """Rows shown are the last complete scan's, being checked by this one."""

    def compose(self) -> ComposeResult:
        """Totals line, filter, table."""
        yield Static("", id="folder-totals")
        yield Input(placeholder="filter names: enter to keep, esc to clear", id="folder-filter")
        yield FolderTable(id="folder-table", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        """Columns for the width we have; the filter starts hidden."""
        self.query_one("#folder-filter", Input).display = False
        self._set_columns()

    def on_resize(self, event: events.Resize) -> None:
        """Columns give way by priority when the pane narrows, and come back when it widens."""
        planned = plan_columns(self._table_width(), self._show_health())
        if planned != self.columns:
            self._refill()

    def _show_health(self) -> bool:
        return self.path is not None and self.health.of(self.path) is not None

    def _table_width(self) -> int:
        width = self.size.width or 80
        return width - 2  # the vertical scrollbar and a margin

    # --- what is shown ---------------------------------------------------------------------

    def show(self, path: str, force: bool = False) -> None:
        """Show a folder: list it now, scan its children in the background.

        Showing the folder already shown does nothing unless `force` (a reload after a job or
        `r`), which keeps the cursor, the sort and the filter.
        """
        if path == self.path and not force:
            return
        if path != self.path:
            self.cursor_path = None
            if self.filter_text:
                self.set_reactive(FolderView.filter_text, "")
                box = self.query_one("#folder-filter", Input)
                box.value = ""
                box.display = False
        self.path = path
        self.token += 1
        self.stats = {}
        self.inventory = None
        self.scan_error = None
        self.remembered = False
        self.query_one("#folder-table", DataTable).clear()
        self.query_one("#folder-totals", Static).update(
            Text(f"{self._shown(path)}  scanning...", style="dim")
        )
        self._scan(self.token, path)

    def current_path(self) -> str | None:
        """The path of the row under the list's cursor, if any."""
        table = self.query_one("#folder-table", DataTable)
        if not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return None if key in (None, "--more--") else str(key)

    def in_progress(self) -> set[str]:
        """Children still being written: moving at the last poll, or incomplete."""
        return self.writing | {p for p, s in self.stats.items() if s.incomplete}

    def select_path(self, path: str) -> None:
        """Put the cursor on a child (when the tree points at a file, or coming back up)."""
        self.cursor_path = path
        table = self.query_one("#folder-table", DataTable)
        if path in table.rows:
            table.move_cursor(row=table.get_row_index(path))

    @work(thread=True, exclusive=True, exit_on_error=False, group="folder")
    def _scan(self, token: int, path: str) -> None:
        worker = get_current_worker()
        try:
            entries = self.listing.list_dir(path)
        except OSError as exc:
            self.post_message(self.Listed(token, path, [], exc.strerror or str(exc)))
            return
        self.post_message(self.Listed(token, path, entries, None))
        remembers = isinstance(self.listing, DiskListing)
        if remembers and (view := remembered_view(path)):
            recalled = [c for e in entries if (c := _recall(e, view.get(e.path))) is not None]
            if recalled:
                self.post_message(self.Remembered(token, recalled))
        children = {os.path.abspath(e.path): ChildStats(e, size=e.size) for e in entries}
        total = Inventory(root=Path(path))
        seen: set[tuple[int, int]] = set()
        batch: list[ChildStats] = []
        last_post = time.monotonic()
        scan = self.listing.folder_scan(path)
        top = os.path.abspath(path)
        for where, line in scan.walk_errors:
            stats = children.get(_child_of(top, where))
            if stats is not None:
                stats.errors += 1
            total.errors.append((where, line))

        def finish(stats: ChildStats, ckpts: list[Checkpoint]) -> None:
            nonlocal batch, last_post
            if stats.entry.error is None:
                stats.size = self.listing.disk_usage(stats.entry.path, seen)
            if len(ckpts) == 1:
                stats.metric = checkpoint_metric(
                    Inventory(Path(stats.entry.path), checkpoints=ckpts)
                )
            stats.scanned = True
            batch.append(stats)
            if time.monotonic() - last_post > 0.2:
                self.post_message(self.ChildrenScanned(token, batch))
                batch, last_post = [], time.monotonic()

        current: ChildStats | None = None
        ckpts: list[Checkpoint] = []
        for result in scan.results(cancelled=lambda: worker.is_cancelled):
            stats = children.get(_child_of(top, result.unit.path))
            if stats is not current:
                if current is not None:
                    finish(current, ckpts)
                current, ckpts = stats, []
            total.errors.extend(result.errors)
            for s in result.checkpoints:
                ckpt = s.checkpoint()
                total.checkpoints.append(ckpt)
                if stats is None:
                    continue  # the folder itself is one checkpoint
                ckpts.append(ckpt)
                stats.weights += s.category_bytes("weights")
                stats.optimizer += s.category_bytes("optimizer")
                stats.other += s.category_bytes("other")
                stats.reclaimable += s.reclaimable_bytes
                stats.incomplete += not s.complete
                stats.checkpoints += 1
            if stats is not None:
                stats.errors += len(result.errors)
        if worker.is_cancelled:
            return
        if current is not None:
            finish(current, ckpts)
        for stats in children.values():
            if not stats.scanned:
                finish(stats, [])
        self.post_message(self.ChildrenScanned(token, batch))
        if remembers:
            remember_view(path, {s.entry.path: _remember(s) for s in children.values()})
        self.post_message(self.ScanDone(token, total))

    @on(Worker.StateChanged)
    def _worker_failed(self, event: Worker.StateChanged) -> None:
        """A scan that raised says so, instead of 'scanning N more...' forever."""
        if event.worker.group != "folder" or event.state != WorkerState.ERROR:
            return
        event.stop()
        error = event.worker.error
        self.scan_error = f"scan failed: {type(error).__name__}: {error}"
        self._update_totals(done=True)

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
        # Re-sorting rebuilds the table: while scanning, only for small folders and at most once
        # a second; big folders are sorted when the scan ends. The cursor stays on its path.
        now = time.monotonic()
        if len(self.stats) <= 100 and now - self._last_refill > 1.0:
            self._refill()
        else:
            self._update_rows(message.stats)
            self._update_totals(done=False)

    @on(Remembered)
    def _remembered(self, message: Remembered) -> None:
        if message.token != self.token:
            return
        message.stop()
        for stats in message.stats:
            if not self.stats.get(stats.entry.path, stats).scanned:  # not rescanned yet
                self.stats[stats.entry.path] = stats
        self.remembered = True
        self._refill()

    @on(ScanDone)
    def _done(self, message: ScanDone) -> None:
        if message.token != self.token:
            return
        self.remembered = False
        self.inventory = message.inventory
        self._refill(done=True)

    def rows(self) -> list[ChildStats]:
        """The children listed, filtered and in the current order."""
        needle = self.filter_text.casefold()
        rows = [s for s in self.stats.values() if needle in s.entry.name.casefold()]
        if self.sort_by == "size":
            rows.sort(key=lambda s: (-s.size, natural_key(s.entry.name)))
        elif self.sort_by == "reclaimable":
            rows.sort(key=lambda s: (-s.reclaimable, -s.size, natural_key(s.entry.name)))
        elif self.sort_by == "metric":
            rows.sort(key=lambda s: (s.metric is None, s.metric[1] if s.metric else 0.0))
        elif self.sort_by == "name":
            rows.sort(key=lambda s: natural_key(s.entry.name))
        else:
            rows.sort(
                key=lambda s: (s.entry.step is None, s.entry.step or 0, natural_key(s.entry.name))
            )
        if self.reverse:
            rows.reverse()
        return rows

    def _set_columns(self) -> None:
        table = self.query_one("#folder-table", DataTable)
        self.columns = plan_columns(self._table_width(), self._show_health())
        for col in self.columns:
            label: Any = col.label
            if col.key == "bar":
                label = Text()
                for cat, short in (("weights", "w"), ("optimizer", "o"), ("other", "x")):
                    label.append(GLYPHS[cat], style=COLORS[cat]).append(short)
                    if cat != "other" and col.width >= 8:
                        label.append(" ")
            elif col.key == "metric":
                names = Counter(s.metric[0] for s in self.stats.values() if s.metric)
                label = Text(names.most_common(1)[0][0] if names else "metric", justify="right")
            elif col.key in ("size", "reclaim", "weights", "optim", "other"):
                label = Text(col.label, justify="right")
            table.add_column(label, key=col.key, width=col.width)

    def _refill(self, done: bool = False) -> None:
        table = self.query_one("#folder-table", DataTable)
        # Columns too: their widths then follow the space there is now.
        table.clear(columns=True)
        self._set_columns()
        self._last_refill = time.monotonic()
        rows = self.rows()
        self._biggest = max((s.size for s in rows), default=0)
        # DataTable measures every row when it first renders: a 10,000-entry folder shows its
        # first MAX_ROWS in the current order; the filter reaches the rest.
        for s in rows[:MAX_ROWS]:
            table.add_row(*self._cells(s), key=s.entry.path)
        if len(rows) > MAX_ROWS:
            table.add_row(
                Text(f"... {len(rows) - MAX_ROWS} more (/ to filter)", style="dim"),
                *[""] * (len(self.columns) - 1),
                key="--more--",
            )
        if self.cursor_path is not None and self.cursor_path in table.rows:
            table.move_cursor(row=table.get_row_index(self.cursor_path), animate=False)
        elif table.row_count:
            table.move_cursor(row=0, animate=False)
        self._update_totals(done=done)

    @on(DataTable.RowHighlighted, "#folder-table")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        # Only the user moves the cursor of a focused table; refills follow `cursor_path`.
        if event.data_table.has_focus and event.row_key.value not in (None, "--more--"):
            self.cursor_path = str(event.row_key.value)

    def _update_rows(self, changed: list[ChildStats]) -> None:
        table = self.query_one("#folder-table", DataTable)
        for s in changed:
            if s.entry.path not in table.rows:
                continue
            for col, value in zip(self.columns, self._cells(s)):
                table.update_cell(s.entry.path, col.key, value)

    def _cells(self, s: ChildStats) -> tuple[Any, ...]:
        biggest = max(self._biggest, s.size)
        e = s.entry
        widths = {c.key: c.width for c in self.columns}
        health = self.health.of(e.path)
        writing = e.path in self.writing
        bad = s.incomplete or s.errors or (health and health.problems)
        flag = "  writing" if writing else "  !" if bad else ""
        label = e.name + ("/" if e.kind == "dir" else "")
        room = widths["name"] - len(flag)
        suffix = f"  {e.layout}" if e.kind == "checkpoint" and e.layout else ""
        if e.error:
            suffix = f"  {e.error}"
        if len(label) + len(suffix) > room and not e.error:
            suffix = ""  # the tree and the Summary still say the layout
        name = Text(
            elide(label, max(1, room - len(suffix))), style="bold" if e.kind != "file" else ""
        )
        name.append(suffix, style="red" if e.error else "cyan")
        if flag:
            name.append(flag, style="bold yellow" if writing else "bold red")
        scanned = s.scanned

        def size(value: int) -> Text:
            return Text(human_bytes(value) if scanned else "", justify="right")

        cells: dict[str, Any] = {
            "name": name,
            "size": Text(human_bytes(s.size), justify="right"),
            "reclaim": size(s.reclaimable),
            "bar": (
                stacked_bar(s.weights, s.optimizer, s.other, widths["bar"], scale=max(biggest, 1))
                if scanned
                else Text("…", style="dim")
            ),
            "weights": size(s.weights),
            "optim": size(s.optimizer),
            "other": size(s.other),
            "step": "" if e.step is None else str(e.step),
            "metric": Text(f"{s.metric[1]:.4g}" if s.metric else "", justify="right"),
            "health": self._health_cell(s, health),
        }
        return tuple(cells[c.key] for c in self.columns)

    def _health_cell(self, s: ChildStats, health: Any) -> Text:
        if health is None:
            return Text("not verified" if s.checkpoints else "", style="dim")
        style = "bold red" if health.problems else "green"
        return Text(health.label(s.checkpoints), style=style)

    def _update_totals(self, done: bool) -> None:
        rows = self.rows() if self.filter_text else list(self.stats.values())
        size = sum(s.size for s in rows)
        optimizer = sum(s.optimizer for s in rows)
        reclaim = sum(s.reclaimable for s in rows)
        ckpts = sum(s.checkpoints for s in rows)
        bad = sum(s.incomplete for s in rows)
        pending = sum(not s.scanned for s in rows)
        writing = sum(s.entry.path in self.writing for s in rows)
        arrow = "↑" if self.reverse else "↓"
        head = Text(self._shown(self.path or ""), style="bold")
        if self.live:
            head.append(f"   {self.live}", style="dim green" if self.live == "live" else "dim")
        if self.filter_text:
            head.append(
                f"   filter {self.filter_text!r}: {len(rows)} of {len(self.stats)}", style="bold"
            )
        text = Text.assemble(
            head,
            "\n",
            (f"{GLYPHS['optimizer']} optimizer state: ", "bold"),
            f"{human_bytes(optimizer)} of {human_bytes(size)}",
            "\n",
            ("reclaimable: ", "bold"),
            human_bytes(reclaim),
            f"   {ckpts} checkpoints",
            (f"   {bad} incomplete" if bad else "", "bold red"),
            (f" ({writing} being written)" if writing else "", "bold yellow"),
            (f"   scanning {pending} more..." if pending and not done else "", "dim"),
            ("   as last scanned, checking..." if self.remembered and not done else "", "dim"),
            (f"   by {self.sort_by} {arrow}", "dim"),
        )
        verified = [h for s in rows if (h := self.health.of(s.entry.path)) is not None]
        if verified:
            sick = sum(h.unhealthy for h in verified)
            fine = sum(h.verified for h in verified) - sick
            text.append("\nverified: ", style="bold")
            text.append(f"{fine} healthy", style="green")
            if sick:
                problems = sum(h.problems for h in verified)
                text.append(f", {sick} with {problems} problem(s)", style="bold red")
        if self.scan_error:
            text.append(f"\n{self.scan_error}", style="bold red")
        self.query_one("#folder-totals", Static).update(text)

    def refresh_rows(self) -> None:
        """Draw the rows again (new theme colours)."""
        self._refill(done=self.inventory is not None)

    def _shown(self, path: str) -> str:
        return os.path.relpath(path, self.base) if self.base else path

    # --- sort and filter ---------------------------------------------------------------------

    def watch_sort_by(self) -> None:
        """Re-sort, the cursor staying on its row."""
        self._refill(done=self.inventory is not None)

    def watch_reverse(self) -> None:
        """Re-sort, the cursor staying on its row."""
        self._refill(done=self.inventory is not None)

    def watch_filter_text(self) -> None:
        """List (and count) only the matching names."""
        self._refill(done=self.inventory is not None)

    def cycle_sort(self) -> str:
        """Sort by the next key (size, reclaimable, name, step)."""
        self.sort_by = SORTS[(SORTS.index(self.sort_by) + 1) % len(SORTS)]
        return self.sort_by

    def open_filter(self) -> None:
        """Show and focus the filter input."""
        box = self.query_one("#folder-filter", Input)
        box.display = True
        box.focus()

    def action_clear_filter(self) -> None:
        """Esc: clear and hide the filter, back to the list."""
        box = self.query_one("#folder-filter", Input)
        if not box.display and not self.filter_text:
            return
        box.value = ""
        box.display = False
        self.filter_text = ""
        self.query_one("#folder-table").focus()

    @on(Input.Changed, "#folder-filter")
    def _filter(self, event: Input.Changed) -> None:
        self.filter_text = event.value

    @on(Input.Submitted, "#folder-filter")
    def _filter_done(self, event: Input.Submitted) -> None:
        """Enter keeps the filter and moves to the list."""
        event.stop()
        if not event.value:
            event.input.display = False
        self.query_one("#folder-table").focus()

    @on(DataTable.RowSelected, "#folder-table")
    def _open(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value and event.row_key.value != "--more--":
            self.post_message(self.Open(str(event.row_key.value)))

    @on(FolderTable.Up)
    def _up(self, message: FolderTable.Up) -> None:
        message.stop()
        if self.path:
            self.post_message(self.Up(self.path))
