"""Human output of ``ckpttui inspect``: one table row per checkpoint, then errors."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ckpttui.inventory import Inventory
from ckpttui.summary import CheckpointSummary, Rel, summarize
from ckpttui.units import epoch_text, human_bytes


def print_report(inv: Inventory) -> None:
    """Print the inventory as a table on stdout (rich, no colour when piped)."""
    unsafe = sorted({g for f in inv.files.values() for g in f.unsafe_globals})
    print_summaries(str(inv.root), summarize(inv), inv.rel, lambda: (unsafe, inv.errors))


def print_summaries(
    root: str,
    summaries: Iterable[CheckpointSummary],
    rel: Rel,
    ending: Callable[[], tuple[list[str], list[tuple[str, str]]]],
) -> None:
    """Print checkpoint summaries as they come as one table, then `ending()`'s unsafe globals
    and errors (asked for once the summaries are consumed)."""
    import sys

    from rich.console import Console
    from rich.table import Table

    # Piped output is for reading later: do not squeeze it to 80 columns.
    console = Console(width=None if sys.stdout.isatty() else 200)
    table = Table(title=root, title_justify="left", expand=False, pad_edge=False)
    for col, justify in (
        ("checkpoint", "left"),
        ("layout", "left"),
        ("step", "right"),
        ("epoch", "right"),
        ("weights", "right"),
        ("optim", "right"),
        ("other", "right"),
        ("reclaim", "right"),
        ("status", "left"),
    ):
        table.add_column(
            col,
            justify=justify,  # type: ignore[arg-type]
            overflow="fold",
            no_wrap=col not in ("checkpoint", "status"),
        )
    totals = {"weights": 0, "optimizer": 0, "other": 0, "reclaimable": 0}
    count = 0
    for ckpt in summaries:
        count += 1
        cats = {k: v["bytes"] for k, v in ckpt.categories.items()}
        for k in ("weights", "optimizer", "other"):
            totals[k] += cats[k]
        totals["reclaimable"] += ckpt.reclaimable_bytes
        status = "ok" if ckpt.complete else "INCOMPLETE"
        if ckpt.info.get("dangerous"):
            status = "RUNS CODE ON LOAD"  # never "ok": see the file's error
        if ckpt.problems:
            status += ": " + "; ".join(ckpt.problems)
        table.add_row(
            rel(ckpt.path) or ".",
            ckpt.layout,
            "" if ckpt.step is None else str(ckpt.step),
            epoch_text(ckpt.epoch, ckpt.info),
            human_bytes(cats["weights"]),
            human_bytes(cats["optimizer"]),
            human_bytes(cats["other"]),
            human_bytes(ckpt.reclaimable_bytes),
            status,
        )
    if count > 1:
        table.add_section()
        table.add_row(
            f"{count} checkpoints",
            "",
            "",
            "",
            human_bytes(totals["weights"]),
            human_bytes(totals["optimizer"]),
            human_bytes(totals["other"]),
            human_bytes(totals["reclaimable"]),
            "",
        )
    console.print(table)
    unsafe, errors = ending()
    if unsafe:
        console.print(
            f"[yellow]pickles name {len(unsafe)} non-data global(s), recorded, never "
            f"imported:[/] " + ", ".join(unsafe[:12]) + (" ..." if len(unsafe) > 12 else "")
        )
    for path, error in errors:
        console.print(f"[red]error[/] {rel(path) or path}: {error}", highlight=False)
