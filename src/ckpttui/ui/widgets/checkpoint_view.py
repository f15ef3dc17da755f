"""The checkpoint view: Summary, Breakdown and Tensors tabs for a checkpoint or a file."""

from __future__ import annotations

import os
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, Input, Static, TabbedContent, TabPane

from ckpttui.inventory import Inventory, scan
from ckpttui.records import TensorRecord
from ckpttui.ui.widgets.render import COLORS, breakdown_renderable, summary_renderable
from ckpttui.units import human_bytes

TENSOR_SORTS = ("bytes", "name", "category", "dtype")


class CheckpointView(Vertical):
    """Everything about one checkpoint (a file or a folder), read in a worker."""

    class Scanned(Message):
        """The checkpoint's inventory is ready (or failed)."""

        def __init__(
            self, token: int, path: str, inventory: Inventory | None, error: str | None
        ) -> None:
            super().__init__()
            self.token, self.path, self.inventory, self.error = token, path, inventory, error

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.token = 0
        self.path: str | None = None
        self.inventory: Inventory | None = None
        self.records: list[tuple[str, TensorRecord]] = []
        self.sort_by = "bytes"
        self.filter_text = ""
        self.base = ""
        """Paths are shown relative to this folder (the parent of the app's root)."""

    def compose(self) -> ComposeResult:
        """Three tabs."""
        with TabbedContent(id="ckpt-tabs"):
            with TabPane("Summary", id="tab-summary"), VerticalScroll():
                yield Static("", id="summary")
            with TabPane("Breakdown", id="tab-breakdown"), VerticalScroll():
                yield Static("", id="breakdown")
            with TabPane("Tensors", id="tab-tensors"):
                yield Input(placeholder="filter tensor names", id="tensor-filter")
                table: DataTable[Any] = DataTable(
                    id="tensor-table", cursor_type="row", zebra_stripes=True
                )
                for label in ("bytes", "category", "dtype", "shape", "part", "name"):
                    table.add_column(label, key=label)
                yield table

    def show(self, path: str, key_prefix: tuple[str, ...] = ()) -> None:
        """Show a checkpoint file or folder; a key prefix pre-fills the tensor filter."""
        if path == self.path and self.inventory is not None:
            self._set_filter(".".join(key_prefix))
            return
        self.path = path
        self.token += 1
        self.inventory = None
        self.records = []
        shown = os.path.relpath(path, self.base) if self.base else path
        waiting = Text(f"reading {shown} ...", style="dim")
        self.query_one("#summary", Static).update(waiting)
        self.query_one("#breakdown", Static).update(waiting)
        self.query_one("#tensor-table", DataTable).clear()
        self._pending_filter = ".".join(key_prefix)
        self._scan(self.token, path)

    @work(thread=True, exclusive=True, exit_on_error=False, group="checkpoint")
    def _scan(self, token: int, path: str) -> None:
        try:
            inv = scan(path)
        except OSError as exc:
            self.post_message(self.Scanned(token, path, None, str(exc)))
            return
        self.post_message(self.Scanned(token, path, inv, None))

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
        inv = self.inventory = message.inventory
        summary = [summary_renderable(inv, c, self.base) for c in inv.checkpoints]
        from rich.console import Group

        errors = [Text(f"{inv.rel(p) or p}: {e}", style="red") for p, e in inv.errors]
        self.query_one("#summary", Static).update(
            Group(*summary, *errors) if summary or errors else Text("no checkpoint here")
        )
        from ckpttui.accounting import Breakdown

        total = Breakdown()
        for c in inv.checkpoints:
            total.merge(inv.checkpoint_breakdown(c))
        self.query_one("#breakdown", Static).update(breakdown_renderable(total))
        self.records = [(inv.rel(f), r) for f, recs in inv.records.items() for r in recs]
        self._set_filter(self._pending_filter)

    def _set_filter(self, text: str) -> None:
        box = self.query_one("#tensor-filter", Input)
        if box.value != text:
            box.value = text
        else:
            self.filter_text = text
            self._fill_tensors()

    @on(Input.Changed, "#tensor-filter")
    def _filter(self, event: Input.Changed) -> None:
        self.filter_text = event.value
        self._fill_tensors()

    def _fill_tensors(self) -> None:
        table = self.query_one("#tensor-table", DataTable)
        table.clear()
        needle = self.filter_text.lower()
        many_files = len({f for f, _ in self.records}) > 1
        rows = [
            (f, r)
            for f, r in self.records
            if not needle or needle in r.name.lower() or needle in f.lower()
        ]
        key = {
            "bytes": lambda fr: -fr[1].nbytes,
            "name": lambda fr: (fr[0], fr[1].name),
            "category": lambda fr: (fr[1].category.value, -fr[1].nbytes),
            "dtype": lambda fr: (fr[1].dtype, -fr[1].nbytes),
        }[self.sort_by]
        rows.sort(key=key)  # type: ignore[arg-type]
        for i, (f, r) in enumerate(rows[:5000]):
            name = f"{f}:{r.name}" if many_files and f else r.name
            cat = r.category.value
            table.add_row(
                Text(human_bytes(r.nbytes), justify="right"),
                Text(cat, style=COLORS[cat]),
                r.dtype,
                "x".join(map(str, r.shape)) or "()",
                r.part,
                name,
                key=str(i),
            )
        if len(rows) > 5000:
            table.add_row(
                "",
                "",
                "",
                "",
                "",
                Text(f"... {len(rows) - 5000} more (filter to narrow)", style="dim"),
            )

    def cycle_sort(self) -> str:
        """Sort tensors by the next key."""
        self.sort_by = TENSOR_SORTS[(TENSOR_SORTS.index(self.sort_by) + 1) % len(TENSOR_SORTS)]
        self._fill_tensors()
        return self.sort_by

    def open_filter(self) -> None:
        """Switch to the Tensors tab and focus its filter."""
        self.query_one("#ckpt-tabs", TabbedContent).active = "tab-tensors"
        self.query_one("#tensor-filter", Input).focus()

    def show_tab(self, tab: str) -> None:
        """Activate a tab by id."""
        self.query_one("#ckpt-tabs", TabbedContent).active = tab
