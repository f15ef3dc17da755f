"""The training curve of a run folder: recorded metrics, with each checkpoint marked."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from ckpttui.curves import Curve


class CurveView(Vertical):
    """A plotext plot of every recorded metric; vertical lines where checkpoints were saved."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.curve: Curve | None = None

    def compose(self) -> ComposeResult:
        """The note line and the plot."""
        from textual_plotext import PlotextPlot

        yield Static("", id="curve-note")
        yield PlotextPlot(id="curve-plot")

    def show(self, curve: Curve | None) -> None:
        """Draw a curve (None: still scanning)."""
        from textual_plotext import PlotextPlot

        self.curve = curve
        note = self.query_one("#curve-note", Static)
        plot = self.query_one("#curve-plot", PlotextPlot)
        plt = plot.plt
        plt.clear_data()
        plt.clear_figure()
        if curve is None:
            note.update("scanning...")
        elif curve.empty:
            note.update(
                "No metric recorded by these checkpoints (trainer state, sidecar YAML, "
                "validation values saved in the checkpoint)."
            )
        else:
            best = []
            for s in curve.series:
                pick = min if curve.lower_is_better.get(s.name, True) else max
                value = pick(s.y)
                best.append(
                    f"{s.name} best {value:.4g} at {curve.x_label} {s.x[s.y.index(value)]:g}"
                )
            note.update("   ".join(best) + f"   | {len(curve.checkpoints)} checkpoints marked")
            for s in curve.series:
                plt.plot(s.x, s.y, label=s.name, marker="braille")
            xs = sorted({x for x, _ in curve.checkpoints})
            if xs:
                plt.vertical_line(xs[0], color="gray")
                for x in xs[1:]:
                    plt.vertical_line(x, color="gray")
            plt.xlabel(curve.x_label)
            plt.title("metrics per " + curve.x_label + " (grey lines: checkpoints)")
        plot.refresh()
