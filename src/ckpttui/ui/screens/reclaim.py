"""The reclaim plan (``d``): which checkpoints are kept and why, which are slimmed, bytes freed.

The plan is computed in a worker (it reads headers and pickles) each time an option changes;
Start asks for confirmation, then the app runs the reclaim as a job.
"""

from __future__ import annotations

import os
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.timer import Timer
from textual.widgets import Button, DataTable, Footer, Input, Label, Select, Static

from ckpttui.jobs.runner import JobSpec
from ckpttui.ui.screens.confirm import ConfirmScreen
from ckpttui.ui.widgets.folder_view import elide
from ckpttui.units import human_bytes

ACTION_STYLE = {"keep": "green", "slim": "bold", "refuse": "yellow"}
REPLAN_DELAY = 0.3
"""Seconds of no typing in the options before the plan is computed again."""


def compute_plan(paths: list[str], options: dict[str, Any]) -> tuple[Any, str | None]:
    """``(ReclaimPlan, None)`` or ``(None, why)``; reads headers and pickles (call it in a worker)."""
    from ckpttui.jobs.events import JobError
    from ckpttui.jobs.reclaim import plan_reclaim

    try:
        return plan_reclaim(paths, **options), None
    except (JobError, OSError, ValueError) as exc:
        return None, str(exc)


class ReclaimScreen(ModalScreen[JobSpec | None]):
    """The plan for the given run folder or marked checkpoints; returns the job, or None."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "submit", "Reclaim"),
    ]

    class Planned(Message):
        """The plan worker finished."""

        def __init__(
            self, token: int, plan: Any, error: str | None, options: dict[str, Any]
        ) -> None:
            super().__init__()
            self.token, self.plan, self.error, self.options = token, plan, error, options

    def __init__(
        self, paths: list[str], base: str = "", marked: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.paths = paths
        self.marked = marked
        """Marked checkpoints: the user chose them, so none is kept unless asked (keep 0 and 0)."""
        self.base = base
        self.plan: Any = None
        self.error: str | None = None
        self._token = 0
        self._pending: Timer | None = None
        self._requested: dict[str, Any] = {}
        self._planned_options: dict[str, Any] = {}
        self._columns: list[str] = []

    def _shown(self, path: str) -> str:
        return os.path.relpath(path, self.base) if self.base else path

    def compose(self) -> ComposeResult:
        """Title, options, the plan table, the selected item's details, the total, buttons."""
        with Vertical(id="reclaim"):
            what = (
                self._shown(self.paths[0])
                if len(self.paths) == 1
                else f"{len(self.paths)} marked checkpoints"
            )
            yield Label(
                Text.assemble(("Reclaim space  ", "bold"), (what, ""), overflow="ellipsis"),
                id="reclaim-title",
            )
            with Horizontal(id="reclaim-options"):
                yield Label("keep last ")
                keep = "0" if self.marked else "1"
                yield Input(keep, id="reclaim-last", type="integer", compact=True)
                yield Label(" best ")
                yield Input(keep, id="reclaim-best", type="integer", compact=True)
                yield Label(" metric ")
                yield Input("", placeholder="framework's", id="reclaim-metric", compact=True)
                yield Label(" drop ")
                yield Select(
                    [("optimizer", "optimizer"), ("training", "training")],
                    value="optimizer",
                    allow_blank=False,
                    compact=True,
                    id="reclaim-drop",
                )
            yield DataTable(id="reclaim-plan", cursor_type="row", zebra_stripes=True)
            yield Static(Text("planning...", style="dim"), id="reclaim-detail")
            yield Static("", id="reclaim-total")
            with Horizontal(id="reclaim-buttons"):
                yield Button("Reclaim (ctrl+s)", variant="error", id="reclaim-start")
                yield Button("Cancel (esc)", id="reclaim-cancel")
        yield Footer()

    def on_mount(self) -> None:
        """Plan with the defaults (keep the newest and the best)."""
        self._replan()
        self.query_one("#reclaim-plan").focus()

    # --- options and the plan ---------------------------------------------------------------

    def options(self) -> dict[str, Any]:
        """The options as `plan_reclaim` and the job take them."""

        def count(selector: str) -> int:
            text = self.query_one(selector, Input).value.strip()
            return int(text) if text.isdigit() else 0

        return {
            "keep_last": count("#reclaim-last"),
            "keep_best": count("#reclaim-best"),
            "metric": self.query_one("#reclaim-metric", Input).value.strip() or None,
            "drop": str(self.query_one("#reclaim-drop", Select).value),
        }

    @on(Input.Changed)
    @on(Select.Changed)
    def _options_changed(self) -> None:
        # Each plan scans the run again: plan once typing pauses, not per keystroke, and not
        # for the events the inputs post when they mount with the options already planned.
        if self.options() == self._requested and self._pending is None:
            return
        self._token += 1
        self.query_one("#reclaim-total", Static).update(Text("planning...", style="dim"))
        if self._pending is not None:
            self._pending.stop()
        self._pending = self.set_timer(REPLAN_DELAY, self._replan)

    def _replan(self) -> None:
        self._pending = None
        self._token += 1
        self.query_one("#reclaim-total", Static).update(Text("planning...", style="dim"))
        self._requested = self.options()
        self._plan(self._token, list(self.paths), self._requested)

    @work(thread=True, exclusive=True, exit_on_error=False, group="reclaim-plan")
    def _plan(self, token: int, paths: list[str], options: dict[str, Any]) -> None:
        plan, error = compute_plan(paths, options)
        self.post_message(self.Planned(token, plan, error, options))

    @on(Planned)
    def _planned(self, message: Planned) -> None:
        if message.token != self._token:
            return
        self.plan, self.error = message.plan, message.error
        self._planned_options = message.options
        table = self.query_one("#reclaim-plan", DataTable)
        cursor = table.cursor_row
        table.clear(columns=True)
        width = max(40, table.size.width or 70) - 2
        wide = width >= 90  # "after" (size minus frees) only where it fits
        fixed = 6 + 9 + 9 + (9 if wide else 0) + 2 * (6 if wide else 5)
        longest = (
            max((len(os.path.basename(i.path.rstrip(os.sep))) for i in self.plan.items), default=12)
            if self.plan is not None
            else 12
        )
        name_w = max(12, min(40, longest, width - fixed - 14))
        columns = [
            ("name", "checkpoint", name_w),
            ("action", "action", 6),
            ("size", "size", 9),
            ("after", "after", 9),
            ("freed", "frees", 9),
            ("why", "why", max(12, width - fixed - name_w)),
        ]
        self._columns = [c[0] for c in columns if wide or c[0] != "after"]
        for key, label, w in columns:
            if key not in self._columns:
                continue
            right = key in ("size", "after", "freed")
            table.add_column(Text(label, justify="right" if right else "left"), key=key, width=w)
        detail = self.query_one("#reclaim-detail", Static)
        total = self.query_one("#reclaim-total", Static)
        if self.plan is None:
            detail.update(Text(self.error or "cannot plan", style="bold red"))
            total.update("")
            return
        for n, item in enumerate(self.plan.items):
            slim = item.action == "slim"
            cells = {
                "name": elide(os.path.basename(item.path.rstrip(os.sep)), name_w),
                "action": Text(item.action, style=ACTION_STYLE.get(item.action, "")),
                "size": Text(human_bytes(item.size), justify="right"),
                "after": Text(human_bytes(item.after) if slim else "", justify="right"),
                "freed": Text(human_bytes(item.freed) if slim else "", justify="right"),
                "why": Text(item.reason, overflow="ellipsis", no_wrap=True),
            }
            table.add_row(*(cells[k] for k in self._columns), key=str(n))
        if table.row_count:
            table.move_cursor(row=min(cursor, table.row_count - 1), animate=False)
        self._show_detail(table.cursor_row)
        total.update(self._total())

    def _total(self) -> Text:
        plan = self.plan
        counts = {a: sum(i.action == a for i in plan.items) for a in ("slim", "keep", "refuse")}
        size = sum(i.size for i in plan.items)
        text = Text.assemble(
            ("total: ", "bold"),
            (f"frees {human_bytes(plan.total_freed)}", "bold"),
            f" of {human_bytes(size)}   {counts['slim']} slimmed, {counts['keep']} kept",
            (f", {counts['refuse']} refused" if counts["refuse"] else "", "yellow"),
        )
        for note in plan.notes[:2]:
            text.append(f"\n{note}", style="dim")
        return text

    @on(DataTable.RowHighlighted, "#reclaim-plan")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_detail(event.cursor_row)

    def _show_detail(self, row: int) -> None:
        detail = self.query_one("#reclaim-detail", Static)
        if self.plan is None or not 0 <= row < len(self.plan.items):
            detail.update("")
            return
        item = self.plan.items[row]
        name = os.path.basename(item.path.rstrip(os.sep))
        text = Text.assemble((name, "bold"), ": ")
        if item.action == "keep":
            text.append(f"kept whole ({item.reason})", style="green")
        elif item.action == "refuse":
            text.append(f"left as it is: {item.reason}", style="yellow")
        else:
            text.append(f"rewritten in place: {item.reason or 'drops ' + self.plan.drop}")

        def names(paths: list[str]) -> str:
            shown = [os.path.relpath(p, os.path.dirname(item.path)) for p in paths[:4]]
            return ", ".join(shown) + (f" +{len(paths) - 4}" if len(paths) > 4 else "")

        if item.writes:
            text.append("\n  writes ", style="dim").append(names(item.writes))
        if item.removes:
            text.append("\n  removes ", style="dim").append(names(item.removes))
        for note in item.notes[:2]:
            text.append(f"\n  {note}", style="dim")
        detail.update(text)

    # --- start ------------------------------------------------------------------------------

    def action_submit(self) -> None:
        """Ask, then return the job."""
        if self.plan is None or self._planned_options != self.options():
            self.notify(self.error or "the plan is not ready yet", severity="warning")
            return
        todo = self.plan.slimmed
        if not todo:
            self.notify("nothing to slim: every checkpoint is kept or refused", timeout=4)
            return
        options = self.options()
        plural = "s" if len(todo) != 1 else ""

        def answer(yes: bool | None) -> None:
            if yes:
                self.dismiss(JobSpec("reclaim", {"paths": list(self.paths), **options}))

        self.app.push_screen(
            ConfirmScreen(
                f"Slim {len(todo)} checkpoint{plural} in place, "
                f"freeing {human_bytes(self.plan.total_freed)}?",
                f"Without its {self.plan.drop} state, each keeps its name and still loads for "
                "inference. Each is written beside itself, verified, then renamed over it: an "
                "interruption leaves it whole.",
            ),
            answer,
        )

    def action_cancel(self) -> None:
        """Close without changing anything."""
        self.dismiss(None)

    @on(Button.Pressed, "#reclaim-start")
    def _start(self) -> None:
        self.action_submit()

    @on(Button.Pressed, "#reclaim-cancel")
    def _cancel(self) -> None:
        self.action_cancel()
