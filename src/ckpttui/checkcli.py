"""``ckpttui verify`` and ``ckpttui diff``: read-only jobs with a report instead of an output file.

verify exits 0 when every checkpoint is healthy, 1 when any problem is found (or the path cannot
be read), 2 on a usage error. diff exits 0 when the comparison ran (identical or not; the report
says which), 1 when an input cannot be read, 2 on a usage error. A progress bar with rate and ETA
goes to stderr on a terminal; ``--json`` prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Iterator
from typing import Any

from ckpttui.diffrows import by_change
from ckpttui.jobs.events import Event
from ckpttui.jobs.runner import JobSpec
from ckpttui.units import human_bytes

TOP = 20  # tensors listed in diff's text output
NOTES = 3  # notes listed per checkpoint in verify's text output


def verify_parser() -> argparse.ArgumentParser:
    """``ckpttui verify``."""
    p = argparse.ArgumentParser(
        prog="ckpttui verify",
        description="Read every tensor once: zip CRC-32 of every record, safetensors and storage "
        "bounds, NaN/Inf counts, all-zero weights, per-tensor statistics. Exit 0 when every "
        "checkpoint is healthy, 1 when a problem is found.",
    )
    p.add_argument("path", help="a checkpoint file or folder, or a folder of many")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    return p


def diff_parser() -> argparse.ArgumentParser:
    """``ckpttui diff``."""
    p = argparse.ArgumentParser(
        prog="ckpttui diff",
        description="Compare two checkpoints tensor by tensor (float64): names only in one, shape "
        "or dtype changes, max |B-A| and ||B-A||/||A|| per tensor and per module.",
    )
    p.add_argument("a", help="checkpoint A (file or folder)")
    p.add_argument("b", help="checkpoint B")
    p.add_argument("--all", action="store_true", help="include optimizer and other state")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    return p


def run_check_command(kind: str, argv: list[str]) -> int:
    """Parse, run verify or diff in this process, print the report; the exit code."""
    if kind == "verify":
        args = verify_parser().parse_args(argv)
        spec = JobSpec("verify", {"path": args.path})
    else:
        args = diff_parser().parse_args(argv)
        spec = JobSpec("diff", {"a": args.a, "b": args.b, "include_all": args.all})
    from ckpttui.jobs.runner import run_spec

    try:
        last = _drain(spec, run_spec(spec, threading.Event()), bar=sys.stderr.isatty())
    except KeyboardInterrupt:
        print(f"ckpttui {kind}: interrupted", file=sys.stderr)
        return 130
    if last is None or last.kind != "done":
        message = last.message if last is not None else "no result"
        print(f"ckpttui {kind}: {message}", file=sys.stderr)
        return 1
    report = last.data
    if args.json:
        json.dump(report, sys.stdout, indent=1)
        sys.stdout.write("\n")
    elif kind == "verify":
        print_verify(report)
    else:
        print_diff(report)
    if kind == "verify":
        return 0 if report.get("healthy") else 1
    return 0


def _drain(spec: JobSpec, events: Iterator[Event], bar: bool) -> Event | None:
    last = None
    if not bar:
        for event in events:
            last = event
        return last
    from ckpttui.jobcli import progress_bar

    progress = progress_bar()
    with progress:
        task = progress.add_task(spec.title, total=None)
        for event in events:
            last = event
            if event.bytes_total:
                progress.update(task, total=event.bytes_total, completed=event.bytes_done)
    return last


def _num(x: Any, fmt: str = ".3g") -> str:
    return "-" if x is None else format(x, fmt)


def print_verify(report: dict[str, Any]) -> None:
    """The text report of ``ckpttui verify``."""
    out = sys.stdout
    for ckpt in report["checkpoints"]:
        name = ckpt["path"] or report["path"]
        counts: dict[str, int] = {}
        crc = 0
        for f in ckpt["files"]:
            crc += f["records_crc_checked"]
            for t in f["tensors"]:
                if t["stats"] is not None:
                    counts[t["category"]] = counts.get(t["category"], 0) + 1
        read = ", ".join(f"{n} {cat}" for cat, n in counts.items()) or "none"
        what = f"tensors read: {read}" + (f"; {crc} zip records CRC-checked" if crc else "")
        if ckpt["healthy"]:
            out.write(f"{name} ({ckpt['layout']}): healthy ({what})\n")
        else:
            n = len(ckpt["problems"])
            out.write(f"{name} ({ckpt['layout']}): {n} problem{'s' if n != 1 else ''} ({what})\n")
        for p in ckpt["problems"]:
            where = f"{p['file']}: tensor {p['tensor']!r}" if p["tensor"] else p["file"]
            out.write(f"  {p['kind']:<10} {where}: {p['message']}\n")
        notes = ckpt["warnings"]
        for w in notes[:NOTES]:
            out.write(f"  note       {w}\n")
        if len(notes) > NOTES:
            out.write(f"  note       ... {len(notes) - NOTES} more notes (--json lists them)\n")
    total = len(report["checkpoints"])
    bad = sum(not c["healthy"] for c in report["checkpoints"])
    secs = report.get("seconds") or 0
    rate = f", {human_bytes(report['bytes_read'] / secs)}/s" if secs >= 1 else ""
    out.write(
        f"{total} checkpoint{'s' if total != 1 else ''}: "
        + (f"{total - bad} healthy, {bad} with problems" if bad else "all healthy")
        + f" ({human_bytes(report['bytes_read'])} read in {secs:.2f} s{rate})\n"
    )


def print_diff(report: dict[str, Any]) -> None:
    """The text report of ``ckpttui diff``: modules and tensors sorted by change."""
    out = sys.stdout
    out.write(f"A: {report['a']} ({report['layout_a']})\nB: {report['b']} ({report['layout_b']})\n")
    for note in report["notes"]:
        out.write(f"  {note}\n")
    for key, title in (("only_a", "only in A"), ("only_b", "only in B")):
        names = report[key]
        if names:
            out.write(f"{title} ({len(names)}): " + ", ".join(names[:10]))
            out.write(f", ... {len(names) - 10} more\n" if len(names) > 10 else "\n")
    if report["changed"]:
        out.write(f"shape or dtype changed ({len(report['changed'])}):\n")
        for c in report["changed"]:
            a, b = c["a"], c["b"]
            out.write(f"  {c['name']}: {a['dtype']}{a['shape']} -> {b['dtype']}{b['shape']}\n")
    tensors = report["tensors"]
    if report["identical"]:
        out.write(f"identical: {len(tensors)} tensors, same names, dtypes, shapes and bytes\n")
        return
    modules = by_change(list(report["modules"]))
    out.write("modules by change:\n")
    out.write(f"  {'rel_change':>10}  {'max_abs':>9}  {'changed':>9}  module\n")
    for m in modules:
        if m["frozen"]:
            continue
        out.write(
            f"  {_num(m['rel_change'], '.3e'):>10}  {_num(m['max_abs'], '.3g'):>9}  "
            f"{m['changed']:>4}/{m['tensors']:<4}  {m['name']}\n"
        )
    frozen = [m["name"] for m in modules if m["frozen"]]
    if frozen:
        out.write(f"frozen (unchanged, {len(frozen)}): " + ", ".join(frozen) + "\n")
    moved = by_change([t for t in tensors if not t["equal"]])
    equal = len(tensors) - len(moved)
    out.write(
        f"tensors by change ({len(moved)} changed, {equal} equal"
        + (f"; top {TOP}, --json for all" if len(moved) > TOP else "")
        + "):\n"
    )
    for t in moved[:TOP]:
        out.write(
            f"  {_num(t['rel_change'], '.3e'):>10}  {_num(t['max_abs'], '.3g'):>9}  {t['name']}\n"
        )
