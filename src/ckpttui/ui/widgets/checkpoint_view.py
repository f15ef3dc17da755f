"""The checkpoint view: Summary, Breakdown and Tensors tabs for a checkpoint or a file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import DataTable, Input, Static, TabbedContent, TabPane

from ckpttui.inventory import Inventory
from ckpttui.records import TensorRecord
from ckpttui.ui.health import HealthBook
from ckpttui.ui.listing import DISK, Listing
from ckpttui.ui.widgets.folder_view import FolderTable, elide, natural_key
from ckpttui.ui.widgets.render import (
    COLORS,
    advice_renderable,
    breakdown_renderable,
    summary_renderable,
)
from ckpttui.units import human_bytes

TENSOR_SORTS = ("bytes", "name", "category", "dtype")
MAX_TENSOR_ROWS = 5000


@dataclass(frozen=True)
class TensorColumn:
    """A column of the Tensors table, dropped right to left when the pane is narrow."""

    key: str
    width: int


STAT_COLUMNS = (
    TensorColumn("nan/inf", 9),
    TensorColumn("mean", 9),
    TensorColumn("std", 9),
    TensorColumn("min", 9),
    TensorColumn("max", 9),
    TensorColumn("norm", 9),
)
"""Shown once the checkpoint was verified (values from the verify job's report)."""
TENSOR_COLUMNS = (
    TensorColumn("bytes", 9),
    TensorColumn("category", 9),
    TensorColumn("shape", 14),
    TensorColumn("dtype", 8),
    TensorColumn("part", 10),
)


def plan_tensor_columns(width: int, stats: bool = False) -> list[TensorColumn]:
    """Name first (at least 20 cells), then bytes and category, then what still fits.

    With `stats` (the checkpoint was verified), NaN/Inf and the statistics come before category.
    """
    used = 20 + 2
    out = [TensorColumn("name", 20)]
    order = (TENSOR_COLUMNS[0], *STAT_COLUMNS, *TENSOR_COLUMNS[1:]) if stats else TENSOR_COLUMNS
    for col in order:
        if used + col.width + 2 <= width or col.key == "bytes":
            out.append(col)
            used += col.width + 2
    name = max(20, width - used + 20)
    out[0] = TensorColumn("name", min(name, 100))
    return out


def _name_prefix(rec: TensorRecord, parts: int) -> str | None:
    """The start of `rec.name` that spells its first `parts` key-tree parts (keys split on '.')."""
    out = ""
    count = 0
    for i, key in enumerate(rec.path):
        pieces = key.split(".")
        for j, piece in enumerate(pieces):
            out += piece
            count += 1
            if count == parts:
                last = i == len(rec.path) - 1 and j == len(pieces) - 1
                return out if last else out + ("." if j < len(pieces) - 1 else "/")
            out += "." if j < len(pieces) - 1 else ""
        out += "/"
    return None


def key_filter(records: list[TensorRecord], key_path: tuple[str, ...]) -> str:
    """The tensor filter that lists exactly the tensors under a key-tree node."""
    for rec in records:
        parts = [p for key in rec.path for p in key.split(".")]
        if tuple(parts[: len(key_path)]) == key_path:
            prefix = _name_prefix(rec, len(key_path))
            if prefix is not None:
                return prefix
    return ".".join(key_path)


class CheckpointView(Vertical):
    """Everything about one checkpoint (a file or a folder), read in a worker."""

    BINDINGS = [Binding("escape", "clear_filter", "Clear filter", show=False)]

    sort_by: reactive[str] = reactive("bytes", init=False)
    """``bytes``, ``name``, ``category`` or ``dtype``."""
    reverse: reactive[bool] = reactive(False, init=False)
    """Reverse the tensor order."""
    filter_text: reactive[str] = reactive("", init=False)
    """Tensor names (or file names) containing this, case ignored."""

    class Scanned(Message):
        """The checkpoint's inventory is ready (or failed)."""

        def __init__(
            self,
            token: int,
            path: str,
            inventory: Inventory | None,
            error: str | None,
            owner: str | None = None,
        ) -> None:
            super().__init__()
            self.token, self.path, self.inventory, self.error = token, path, inventory, error
            self.owner = owner

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.token = 0
        self.path: str | None = None
        self.owner: str | None = None
        """The checkpoint folder holding the file shown, if it is part of one."""
        self.inventory: Inventory | None = None
        self.records: list[tuple[str, TensorRecord]] = []
        self.columns = plan_tensor_columns(60)
        self._pending_key: tuple[str, ...] = ()
        self._abs: dict[str, str] = {}
        """File as listed -> absolute path (to find its verify statistics)."""
        self.health = HealthBook()
        """Verdicts of this session's verify jobs (shared with the app)."""
        self.base = ""
        """Paths are shown relative to this folder (the parent of the app's root)."""
        self.listing: Listing = DISK
        """Where checkpoints are read from (the disk, or a saved scan)."""

    def compose(self) -> ComposeResult:
        """Three tabs."""
        with TabbedContent(id="ckpt-tabs"):
            with TabPane("Summary", id="tab-summary"), VerticalScroll():
                yield Static("", id="summary")
            with TabPane("Breakdown", id="tab-breakdown"), VerticalScroll():
                yield Static("", id="breakdown")
            with TabPane("Tensors", id="tab-tensors"):
                yield Static("", id="tensor-health")
                yield Input(
                    placeholder="filter tensor names: enter to keep, esc to clear",
                    id="tensor-filter",
                )
                yield FolderTable(id="tensor-table", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        """The verify line shows once the checkpoint was verified."""
        self.query_one("#tensor-health", Static).display = False

    def on_resize(self, event: events.Resize) -> None:
        """The name column takes the width there is; other columns give way."""
        if plan_tensor_columns(self.size.width - 2, self._verified()) != self.columns:
            self._fill_tensors()

    def show(self, path: str, key_prefix: tuple[str, ...] = ()) -> None:
        """Show a checkpoint file or folder; a key prefix filters the tensors under that key."""
        if path == self.path and self.inventory is not None:
            self._set_filter(self._key_text(key_prefix))
            return
        self.path = path
        self.owner = None
        self.token += 1
        self.inventory = None
        self.records = []
        shown = os.path.relpath(path, self.base) if self.base else path
        waiting = Text(f"reading {shown} ...", style="dim")
        self.query_one("#summary", Static).update(waiting)
        self.query_one("#breakdown", Static).update(waiting)
        self.query_one("#tensor-table", DataTable).clear()
        self._pending_key = key_prefix
        self._scan(self.token, path)

    def _key_text(self, key_prefix: tuple[str, ...]) -> str:
        if not key_prefix:
            return ""
        return key_filter([r for _, r in self.records], key_prefix)

    @work(thread=True, exclusive=True, exit_on_error=False, group="checkpoint")
    def _scan(self, token: int, path: str) -> None:
        # A file inside a checkpoint folder is described as part of that checkpoint (its layout).
        listing = self.listing
        owner = listing.owning_checkpoint(path) if listing.is_file(path) else None
        try:
            inv = listing.scan(owner or path)
        except OSError as exc:
            self.post_message(self.Scanned(token, path, None, str(exc)))
            return
        if (
            owner is not None
            and path not in inv.files
            and not any(path in c.files for c in inv.checkpoints)
        ):
            owner = None
            inv = listing.scan(path)
        self.post_message(self.Scanned(token, path, inv, None, owner))

    @on(Scanned)
    def _scanned(self, message: Scanned) -> None:
        if message.token != self.token:
            return
        message.stop()
        if message.inventory is None:
            error = Text(message.error or "cannot read", style="red")
            self.query_one("#summary", Static).update(error)
            self.query_one("#breakdown", Static).update(error)
            return
        from rich.console import Group

        from ckpttui.accounting import Breakdown

        inv = self.inventory = message.inventory
        self.owner = message.owner
        path = message.path
        if self.owner:
            ckpts = [c for c in inv.checkpoints if path in c.files]
            summary: list[Any] = [
                Text.assemble(
                    ("file ", "bold"),
                    os.path.basename(path),
                    ("  is part of the checkpoint below (", "dim"),
                    (inv.layout_of.get(path, ckpts[0].layout if ckpts else "?"), "cyan"),
                    (")", "dim"),
                ),
                Text(""),
            ]
            summary += [summary_renderable(inv, c, self.base, focus=path) for c in ckpts]
            total = inv.file_breakdown(path)
            files = [path]
        else:
            ckpts = list(inv.checkpoints)
            summary = [summary_renderable(inv, c, self.base) for c in ckpts]
            total = Breakdown()
            for c in ckpts:
                total.merge(inv.checkpoint_breakdown(c))
            files = list(inv.records)
        advice = [a for c in ckpts if (a := advice_renderable(inv, c)) is not None]
        errors = [Text(f"{inv.rel(p) or p}: {e}", style="red") for p, e in inv.errors]
        self.query_one("#summary", Static).update(
            Group(*advice, *summary, *errors) if summary or errors else Text("no checkpoint here")
        )
        self.query_one("#breakdown", Static).update(breakdown_renderable(total))
        self.records = [(inv.rel(f), r) for f in files for r in inv.records.get(f, [])]
        self._abs = {inv.rel(f): f for f in files}
        self._set_filter(self._key_text(self._pending_key))

    def _set_filter(self, text: str) -> None:
        box = self.query_one("#tensor-filter", Input)
        if box.value != text:
            box.value = text  # Input.Changed sets filter_text
        else:
            self._fill_tensors()

    @on(Input.Changed, "#tensor-filter")
    def _filter(self, event: Input.Changed) -> None:
        self.filter_text = event.value

    @on(Input.Submitted, "#tensor-filter")
    def _filter_done(self, event: Input.Submitted) -> None:
        """Enter keeps the filter and moves to the table."""
        event.stop()
        self.query_one("#tensor-table").focus()

    def action_clear_filter(self) -> None:
        """Esc: clear the tensor filter, back to the table."""
        box = self.query_one("#tensor-filter", Input)
        box.value = ""
        self.filter_text = ""
        self.query_one("#tensor-table").focus()

    def watch_filter_text(self) -> None:
        """List the matching tensors."""
        self._fill_tensors()

    def watch_sort_by(self) -> None:
        """Re-sort the tensors."""
        self._fill_tensors()

    def watch_reverse(self) -> None:
        """Reverse the tensor order."""
        self._fill_tensors()

    def rows(self) -> list[tuple[str, TensorRecord]]:
        """(file, record) of the tensors listed, filtered and sorted."""
        needle = self.filter_text.casefold()
        rows = [
            (f, r)
            for f, r in self.records
            if not needle or needle in r.name.casefold() or needle in f.casefold()
        ]
        key = {
            "bytes": lambda fr: (-fr[1].nbytes, natural_key(fr[1].name)),
            "name": lambda fr: (natural_key(fr[0]), natural_key(fr[1].name)),
            "category": lambda fr: (fr[1].category.value, -fr[1].nbytes),
            "dtype": lambda fr: (fr[1].dtype, -fr[1].nbytes),
        }[self.sort_by]
        rows.sort(key=key)  # type: ignore[arg-type]
        if self.reverse:
            rows.reverse()
        return rows

    def _verified(self) -> bool:
        return any(self.health.verified_file(f) for f in self._abs.values())

    def health_changed(self) -> None:
        """A verify job ended: show its statistics and problems if they are about this checkpoint."""
        if self.inventory is not None:
            self._fill_tensors()

    def _show_health(self) -> None:
        box = self.query_one("#tensor-health", Static)
        verified = self._verified() and self.path is not None
        box.display = verified
        if not verified or self.path is None:
            return
        lines = self.health.problems(self.owner or self.path)
        if not lines:
            box.update(Text("verified: healthy (statistics of every tensor below)", style="green"))
            return
        text = Text(f"verified: {len(lines)} problem(s)", style="bold red")
        for line in lines[:5]:
            text.append(f"\n  {line}", style="red")
        if len(lines) > 5:
            text.append(f"\n  ... {len(lines) - 5} more (ckpttui verify PATH lists them)")
        box.update(text)

    def _stat_cells(self, f: str, r: TensorRecord) -> dict[str, Any]:
        stats = self.health.tensor_stats(self._abs.get(f, f), r.name)
        if stats is None:
            return {k.key: "" for k in STAT_COLUMNS}

        def number(key: str) -> Text:
            value = stats.get(key)
            return Text("" if value is None else f"{value:.3g}", justify="right")

        bad = [
            f"{stats[k]} {k.capitalize() if k == 'inf' else 'NaN'}"
            for k in ("nan", "inf")
            if stats.get(k)
        ]
        return {
            "nan/inf": Text(" ".join(bad), style="bold red", justify="right"),
            **{k: number(k) for k in ("mean", "std", "min", "max", "norm")},
        }

    def _fill_tensors(self) -> None:
        table = self.query_one("#tensor-table", DataTable)
        table.clear(columns=True)
        verified = self._verified()
        self._show_health()
        self.columns = plan_tensor_columns((self.size.width or 62) - 2, verified)
        for col in self.columns:
            label: Any = (
                Text(col.key, justify="right")
                if col.key == "bytes" or col.key in {c.key for c in STAT_COLUMNS}
                else col.key
            )
            table.add_column(label, key=col.key, width=col.width)
        many_files = len({f for f, _ in self.records}) > 1
        rows = self.rows()
        name_w = self.columns[0].width
        for i, (f, r) in enumerate(rows[:MAX_TENSOR_ROWS]):
            name = f"{f}:{r.name}" if many_files and f else r.name
            cat = r.category.value
            cells = {
                "name": elide(name, name_w),
                "bytes": Text(human_bytes(r.nbytes), justify="right"),
                "category": Text(cat, style=COLORS[cat]),
                "dtype": r.dtype,
                "shape": "x".join(map(str, r.shape)) or "()",
                "part": r.part,
                **(self._stat_cells(f, r) if verified else {}),
            }
            table.add_row(*(cells[c.key] for c in self.columns), key=str(i))
        if len(rows) > MAX_TENSOR_ROWS:
            more = Text(f"... {len(rows) - MAX_TENSOR_ROWS} more (filter to narrow)", style="dim")
            table.add_row(more, *[""] * (len(self.columns) - 1))

    def cycle_sort(self) -> str:
        """Sort tensors by the next key."""
        self.sort_by = TENSOR_SORTS[(TENSOR_SORTS.index(self.sort_by) + 1) % len(TENSOR_SORTS)]
        return self.sort_by

    def open_filter(self) -> None:
        """Switch to the Tensors tab and focus its filter."""
        self.query_one("#ckpt-tabs", TabbedContent).active = "tab-tensors"
        self.query_one("#tensor-filter", Input).focus()

    def show_tab(self, tab: str) -> None:
        """Activate a tab by id."""
        self.query_one("#ckpt-tabs", TabbedContent).active = tab
