"""The training curves of a folder: one run at a time, one plot per metric scale."""

from __future__ import annotations

import os
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import Static

from ckpttui.curves import Curve, best_point, build_curve, checkpoint_near, scale_groups, split_runs
from ckpttui.inventory import Inventory

MAX_LINES = 24
"""Above this many checkpoints, vertical lines would fill the plot: only the best are drawn."""


class CurveView(Vertical, can_focus=True):
    """Metrics of one run per plot scale; `[` `]` switch runs, `b` selects the best checkpoint."""

    BINDINGS = [
        Binding("left_square_bracket", "run(-1)", "Prev run", show=False),
        Binding("right_square_bracket", "run(1)", "Next run", show=False),
        Binding("b", "best", "Best"),
    ]

    run_index: reactive[int] = reactive(0, init=False)
    """Which run of the folder is plotted."""

    class GoTo(Message):
        """The user asked for a checkpoint of the curve (its best point)."""

        def __init__(self, path: str) -> None:
            super().__init__()
            self.path = path

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.curve: Curve | None = None
        self.runs: list[tuple[str, Curve]] = []
        self.root = ""

    def compose(self) -> ComposeResult:
        """The note line and the plot."""
        from textual_plotext import PlotextPlot

        yield Static("", id="curve-note")
        with Vertical(id="curve-plots"):
            yield PlotextPlot(classes="curve-plot")

    def show_inventory(self, inv: Inventory | None) -> None:
        """Curves of every run in a folder's inventory (None: still scanning)."""
        if inv is None:
            self.runs, self.curve = [], None
            self._draw()
            return
        self.root = str(inv.root)
        runs = [(folder, build_curve(sub)) for folder, sub in split_runs(inv)]
        with_metrics = [(f, c) for f, c in runs if not c.empty]
        self.runs = with_metrics or runs[:1]
        self.set_reactive(CurveView.run_index, 0)
        self.curve = self.runs[0][1] if self.runs else build_curve(inv)
        self._draw()

    def show(self, curve: Curve | None) -> None:
        """Draw one curve (None: still scanning)."""
        self.runs = [(self.root, curve)] if curve is not None else []
        self.curve = curve
        self._draw()

    def watch_run_index(self, index: int) -> None:
        """Plot another run."""
        if self.runs:
            self.curve = self.runs[index % len(self.runs)][1]
        self._draw()

    def action_run(self, step: int) -> None:
        """Next or previous run of the folder."""
        if len(self.runs) > 1:
            self.run_index = (self.run_index + step) % len(self.runs)

    def action_best(self) -> None:
        """Select, in the tree, the checkpoint at the first metric's best point."""
        curve = self.curve
        if curve is None or curve.empty:
            return
        x, _ = best_point(curve, curve.series[0])
        label = checkpoint_near(curve, x)
        if label is not None:
            self.post_message(
                self.GoTo(os.path.join(self.root, label) if label != "." else self.root)
            )

    def _draw(self) -> None:
        from textual_plotext import PlotextPlot

        curve = self.curve
        note = self.query_one("#curve-note", Static)
        box = self.query_one("#curve-plots", Vertical)
        box.remove_children()
        if curve is None:
            note.update("scanning...")
        elif curve.empty:
            note.update(
                "No metric recorded by these checkpoints (trainer state, sidecar YAML, "
                "validation values saved in the checkpoint)."
            )
        else:
            text = Text()
            if len(self.runs) > 1:
                folder = self.runs[self.run_index % len(self.runs)][0]
                rel = os.path.relpath(folder, self.root) if self.root else folder
                text.append(
                    f"run {self.run_index + 1}/{len(self.runs)} {rel}  ([ ] switch)\n", "bold"
                )
            best_x = []
            for s in curve.series:
                x, value = best_point(curve, s)
                best_x.append(x)
                where = checkpoint_near(curve, x)
                text.append(f"{s.name} ", style="bold")
                text.append(f"best {value:.4g} at {curve.x_label} {x:g}")
                if where:
                    text.append(f" ({os.path.basename(where)})", style="dim")
                text.append("   ")
            text.append(f"| {len(curve.checkpoints)} checkpoints; b selects the best", style="dim")
            note.update(text)
            xs = sorted({x for x, _ in curve.checkpoints})
            lines = xs if len(xs) <= MAX_LINES else sorted(set(best_x))
            what = "checkpoints" if len(xs) <= MAX_LINES else "best points"
            plots = []
            # One plot per scale: an accuracy in 0-1 never shares an axis with a loss in 7-14.
            for group in scale_groups(curve):
                plot = PlotextPlot(classes="curve-plot")
                plt = plot.plt
                for s in group:
                    plt.plot(s.x, s.y, label=s.name, marker="braille")
                for x in lines:
                    plt.vertical_line(x, color="gray")
                plt.xlabel(curve.x_label)
                names = ", ".join(s.name for s in group)
                plt.title(f"{names} per {curve.x_label} (grey: {what})")
                plots.append(plot)
            box.mount_all(plots)
            return
        box.mount(PlotextPlot(classes="curve-plot"))
