"""The diff view (``D`` on two marked checkpoints): modules and tensors, most changed first."""

from __future__ import annotations

import os
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Static

from ckpttui.diffrows import by_change
from ckpttui.ui.widgets.folder_view import FolderTable, elide


def _number(value: Any, changed: bool) -> Text:
    if not changed:
        return Text("=", style="dim", justify="right")
    if value is None:
        return Text("NaN/Inf", style="bold red", justify="right")
    return Text(f"{value:.3g}", justify="right")


class DiffScreen(ModalScreen[None]):
    """What changed from A to B: per module (frozen ones called out), then per tensor."""

    BINDINGS = [
        Binding("escape,q", "dismiss", "Close", key_display="esc"),
        Binding("tab", "focus_next", "Next table", show=False),
    ]

    def __init__(self, report: dict[str, Any], base: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.report = report
        self.base = base

    def _shown(self, path: str) -> str:
        return os.path.relpath(path, self.base) if self.base else path

    def compose(self) -> ComposeResult:
        """Header lines, modules table, tensors table."""
        with Vertical(id="diff"):
            yield Static(self._header(), id="diff-header")
            yield DataTable(id="diff-modules", cursor_type="row", zebra_stripes=True)
            yield FolderTable(id="diff-tensors", cursor_type="row", zebra_stripes=True)
        yield Footer(compact=True)

    def _header(self) -> Text:
        r = self.report
        tensors = r.get("tensors", [])
        changed = sum(not t["equal"] for t in tensors)
        text = Text.assemble(
            ("diff  ", "bold"),
            ("A ", "dim"),
            self._shown(str(r.get("a", ""))),
            ("  →  B ", "dim"),
            self._shown(str(r.get("b", ""))),
            "\n",
        )
        if r.get("identical"):
            text.append("identical: every tensor has the same bytes", style="bold green")
        else:
            text.append(f"{len(tensors)} tensors compared: ")
            text.append(f"{changed} changed", style="bold")
            text.append(f", {len(tensors) - changed} equal")
            for key, label in (("only_a", "only in A"), ("only_b", "only in B")):
                if r.get(key):
                    text.append(f"; {len(r[key])} {label}", style="yellow")
            if r.get("changed"):
                text.append(f"; {len(r['changed'])} changed shape or dtype", style="yellow")
        frozen = [m["name"] for m in r.get("modules", []) if m.get("frozen")]
        moved = [m for m in r.get("modules", []) if not m.get("frozen")]
        if frozen and moved:
            text.append("\nfrozen (unchanged): ", style="bold")
            text.append(", ".join(frozen[:8]) + (f" +{len(frozen) - 8}" if len(frozen) > 8 else ""))
        elif frozen:
            text.append("\nevery module is unchanged", style="bold")
        text.append("\nrel change = ‖B−A‖₂ / ‖A‖₂ (float64)", style="dim")
        return text

    def on_mount(self) -> None:
        """Fill both tables, most changed first."""
        self._fill()
        self.query_one("#diff-tensors").focus()

    def on_resize(self) -> None:
        """Names take the width there is."""
        self._fill()

    def _fill(self) -> None:
        width = max(40, self.size.width - 4)
        numbers = 10
        # Names as wide as the longest (numbers stay beside them), at most what the screen has.
        longest = max((len(str(m["name"])) for m in self.report.get("modules", [])), default=0)
        name_w = max(16, min(width - 4 * (numbers + 2) - 2, longest + 2))
        modules = self.query_one("#diff-modules", DataTable)
        modules.clear(columns=True)
        for key, label, w in (
            ("name", "module", name_w),
            ("rel", "rel change", numbers),
            ("max", "max |Δ|", numbers),
            ("changed", "changed", numbers),
            ("note", "", numbers),
        ):
            modules.add_column(
                Text(label, justify="right") if key not in ("name", "note") else label,
                key=key,
                width=w,
            )
        for m in by_change(list(self.report.get("modules", []))):
            moved = not m.get("frozen")
            modules.add_row(
                elide(str(m["name"]), name_w),
                _number(m.get("rel_change"), moved),
                _number(m.get("max_abs"), moved),
                Text(f"{m['changed']}/{m['tensors']}", justify="right"),
                Text("frozen", style="bold cyan") if not moved else "",
                key=str(m["name"]),
            )
        tensors = self.query_one("#diff-tensors", DataTable)
        tensors.clear(columns=True)
        longest = max((len(str(t["name"])) for t in self.report.get("tensors", [])), default=0)
        name_w = max(16, min(width - 2 * (numbers + 2), longest + 2))
        tensors.add_column("tensor", key="name", width=name_w)
        tensors.add_column(Text("rel change", justify="right"), key="rel", width=numbers)
        tensors.add_column(Text("max |Δ|", justify="right"), key="max", width=numbers)
        for i, t in enumerate(by_change(list(self.report.get("tensors", [])))):
            moved = not t["equal"]
            tensors.add_row(
                Text(elide(str(t["name"]), name_w), style="" if moved else "dim"),
                _number(t.get("rel_change"), moved),
                _number(t.get("max_abs"), moved),
                key=str(i),
            )
        extra = [
            *(f"only in A: {n}" for n in self.report.get("only_a", [])),
            *(f"only in B: {n}" for n in self.report.get("only_b", [])),
            *(
                f"{c['name']}: {c['a']['dtype']} {c['a']['shape']} -> "
                f"{c['b']['dtype']} {c['b']['shape']}"
                for c in self.report.get("changed", [])
            ),
        ]
        for n, line in enumerate(extra[:200]):
            tensors.add_row(Text(elide(line, name_w), style="yellow"), "", "", key=f"x{n}")
