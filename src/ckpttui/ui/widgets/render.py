"""Rich renderables for checkpoints: stacked bars, breakdown tables, summaries (no Textual here)."""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from ckpttui.accounting import Breakdown
from ckpttui.inventory import Inventory
from ckpttui.layouts import layout_named
from ckpttui.records import Checkpoint
from ckpttui.units import epoch_text, human_bytes

COLORS = {"weights": "green", "optimizer": "blue", "other": "yellow"}
"""Category colours; `use_theme` sets them from the app's theme (success, primary, warning)."""
GLYPHS = {"weights": "█", "optimizer": "▒", "other": "░"}
"""A glyph per category, so a bar reads without colour (NO_COLOR, monochrome terminals)."""
BLOCK = GLYPHS["weights"]
CATEGORY_NAMES = ("weights", "optimizer", "other")


def use_theme(theme: Any) -> None:
    """Take the category colours from a Textual theme, never the theme's error colour."""
    error = str(getattr(theme, "error", "") or "").lower()
    choices = {
        "weights": ("success", "secondary"),
        "optimizer": ("primary", "accent", "secondary"),
        "other": ("warning", "accent"),
    }
    taken: set[str] = {error}
    for cat, names in choices.items():
        for name in names:
            value = str(getattr(theme, name, "") or "")
            if value and value.lower() not in taken:
                COLORS[cat] = value.replace("ansi_", "")
                taken.add(value.lower())
                break


def legend() -> Text:
    """``█ weights  ▒ optimizer  ░ other``, each in its colour."""
    text = Text()
    for cat in CATEGORY_NAMES:
        text.append(f"{GLYPHS[cat]} {cat}", style=COLORS[cat])
        text.append("  ")
    text.rstrip()
    return text


def pct(part: int, whole: int) -> str:
    """A percentage with one decimal (``66.7%``), or ``-`` for an empty whole."""
    return f"{100 * part / whole:.1f}%" if whole else "-"


def stacked_bar(
    weights: int, optimizer: int, other: int, width: int, scale: int | None = None
) -> Text:
    """A bar split into weights / optimizer / other, `width` cells for `scale` bytes."""
    total = weights + optimizer + other
    scale = scale or total
    text = Text()
    if not scale or width <= 0:
        return text.append("·" * max(width, 0), style="dim")
    used = 0
    for value, cat in ((weights, "weights"), (optimizer, "optimizer"), (other, "other")):
        cells = round(width * value / scale)
        cells = min(cells, width - used)
        if value and cells == 0 and used < width:
            cells = 1
        text.append(GLYPHS[cat] * cells, style=COLORS[cat])
        used += cells
    text.append("·" * (width - used), style="dim")
    return text


class FitBar:
    """A stacked bar as wide as the space it is drawn in (at most `max_width` cells)."""

    def __init__(self, weights: int, optimizer: int, other: int, max_width: int = 80) -> None:
        self.parts = (weights, optimizer, other)
        self.max_width = max_width

    def __rich_console__(self, console: Any, options: Any) -> Any:
        yield stacked_bar(*self.parts, width=min(options.max_width, self.max_width))


def category_bytes(b: Breakdown) -> tuple[int, int, int]:
    """(weights, optimizer, other) bytes."""
    c = b.categories
    return c["weights"]["bytes"], c["optimizer"]["bytes"], c["other"]["bytes"]


def breakdown_renderable(b: Breakdown, width: int = 80) -> RenderableType:
    """The Breakdown tab: a stacked bar, then categories, optimizer parts, dtypes, modules."""
    w, o, x = category_bytes(b)
    total = w + o + x
    head = Text.assemble(
        ("tensor bytes ", "bold"),
        human_bytes(total),
        ("   reclaimable ", "bold"),
        human_bytes(b.reclaimable),
        f" ({pct(b.reclaimable, total)})",
    )
    cats = Table(title="By category", title_justify="left", expand=False, box=None, padding=(0, 1))
    for col, justify in (
        ("category", "left"),
        ("tensors", "right"),
        ("bytes", "right"),
        ("share", "right"),
    ):
        cats.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for name, value in (("weights", w), ("optimizer", o), ("other", x)):
        cats.add_row(
            Text(GLYPHS[name] + " " + name, style=COLORS[name]),
            str(b.categories[name]["tensors"]),
            human_bytes(value),
            pct(value, total),
        )
    parts = Table(title="By part", title_justify="left", box=None, padding=(0, 1))
    for col, justify in (("part", "left"), ("bytes", "right"), ("share", "right")):
        parts.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for key, value in sorted(b.parts.items(), key=lambda kv: -kv[1]):
        cat, _, part = key.partition("/")
        parts.add_row(
            Text.assemble((cat, COLORS.get(cat, "")), "/", part),
            human_bytes(value),
            pct(value, total),
        )
    dtypes = Table(title="By dtype", title_justify="left", box=None, padding=(0, 1))
    for col, justify in (
        ("dtype", "left"),
        ("tensors", "right"),
        ("bytes", "right"),
        ("share", "right"),
    ):
        dtypes.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for dtype, value in sorted(b.dtype_bytes.items(), key=lambda kv: -kv[1]):
        dtypes.add_row(dtype, str(b.dtypes[dtype]), human_bytes(value), pct(value, total))
    modules = Table(title="Weights by module", title_justify="left", box=None, padding=(0, 1))
    for col, justify in (("module", "left"), ("bytes", "right"), ("of weights", "right")):
        modules.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for module, value in b.modules.most_common(12):
        modules.add_row(module, human_bytes(value), pct(value, w))
    return Group(
        head,
        FitBar(w, o, x, width),
        Text(""),
        cats,
        Text(""),
        parts,
        Text(""),
        dtypes,
        Text(""),
        modules,
    )


def _info_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):
        text = str(value)
        return text if len(text) < 80 else text[:77] + "..."
    return str(value)


def advice_renderable(inv: Inventory, ckpt: Checkpoint) -> RenderableType | None:
    """Plain words on a checkpoint folder that loaders cannot take as it is, and the key to press."""
    import os

    if not os.path.isdir(ckpt.path):
        return None
    names = [os.path.basename(f) for f in ckpt.files]
    text: Text | None = None
    layout = layout_named(ckpt.layout)
    advice = layout.folder_advice(ckpt) if layout is not None else None
    if advice is not None:
        headline, body, key, tail = advice
        text = Text.assemble((headline, "bold"), body, (key, "bold"), tail)
    elif any(n.endswith(".index.json") for n in names) and any(
        n.endswith((".safetensors", ".bin")) for n in names
    ):
        text = Text.assemble(
            ("Sharded weights: ", "bold"),
            "several files and an index. ",
            ("Press m", "bold"),
            " to join them into one file, or e to export (dtype, prefix, shard size).",
        )
    if text is None:
        return None
    return Group(text, Text(""))


def summary_renderable(
    inv: Inventory, ckpt: Checkpoint, base: str = "", focus: str | None = None
) -> RenderableType:
    """The Summary tab: layout, position, completeness, framework metadata, globals, files.

    `focus` is the file the user selected inside the checkpoint; its row is marked.
    """
    import os

    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold", no_wrap=True)
    t.add_column()
    t.add_row("path", os.path.relpath(ckpt.path, base) if base else ckpt.path)
    t.add_row("layout", ckpt.layout)
    if ckpt.step is not None:
        t.add_row("step", str(ckpt.step))
    if ckpt.epoch is not None:
        t.add_row("epoch", epoch_text(ckpt.epoch, ckpt.info))
    t.add_row(
        "complete", Text("yes", style="green") if ckpt.complete else Text("NO", style="bold red")
    )
    for problem in ckpt.problems:
        t.add_row("problem", Text(problem, style="red"))
    for key, value in ckpt.info.items():
        if key in ("log_history", "epoch", "epoch_float", "step") or value is None:
            continue
        t.add_row(key, _info_value(value))
    unsafe = sorted({g for f in ckpt.files if f in inv.files for g in inv.files[f].unsafe_globals})
    if unsafe:
        t.add_row("unsafe globals", Text("\n".join(unsafe), style="yellow"))
    files = Table(title="Files", title_justify="left", box=None, padding=(0, 1))
    for col, justify in (
        ("file", "left"),
        ("format", "left"),
        ("size", "right"),
        ("tensors", "right"),
        ("note", "left"),
    ):
        # Long names wrap rather than being cut, and keep room to be read; notes give way.
        longest = max((len(os.path.basename(f)) for f in ckpt.files), default=4)
        files.add_column(
            col,
            justify=justify,  # type: ignore[arg-type]
            overflow="ellipsis" if col == "note" else "fold",
            no_wrap=col in ("size", "tensors", "format", "note"),
            min_width=min(longest, 16) if col == "file" else None,
            max_width=16 if col == "note" else None,
        )
    for f in ckpt.files:
        index = inv.files.get(f)
        rel: Any = os.path.relpath(f, ckpt.path) if f != ckpt.path else os.path.basename(f)
        if f == focus:
            rel = Text(rel, style="bold underline")
        if index is None:
            try:
                size = os.stat(f).st_size
            except OSError:
                size = 0
            files.add_row(rel, "", human_bytes(size), "", "")
            continue
        note = (
            Text(index.error, style="red")
            if index.error
            else Text(", ".join(index.unsafe_globals[:2]), style="yellow")
        )
        count = len(index.tensors) or index.metadata.get("tensor_count", 0)  # saved scans count
        files.add_row(rel, index.format, human_bytes(index.size), str(count), note)
    return Group(t, Text(""), files)
