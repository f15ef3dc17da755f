"""Command line: ``ckpttui [PATH]`` opens the app; ``inspect``, ``demo``, ``clean`` run headless."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

COMMANDS = (
    "inspect",
    "demo",
    "merge",
    "average",
    "export",
    "reclaim",
    "verify",
    "diff",
    "clean",
)


def _inspect_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ckpttui inspect",
        description="What is in a checkpoint file or folder: layout, step/epoch, weights vs "
        "optimizer state, completeness. Reads headers and pickles only.",
    )
    p.add_argument("path", help="a checkpoint file or a folder (walked recursively)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument(
        "-j",
        "--jobs",
        type=_positive,
        default=None,
        help="worker processes reading headers (default: the cores, at most 16)",
    )
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="read every file again; do not use or update the scan cache",
    )
    return p


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _demo_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ckpttui demo",
        description="Generate a small experiments folder with real checkpoints (once, in a cache "
        "folder) and open ckpttui on it.",
    )
    p.add_argument("--dir", help="where to generate it (default: a cache folder)")
    p.add_argument("--regenerate", action="store_true", help="write it again from scratch")
    p.add_argument("--no-open", action="store_true", help="only generate; print its path")
    return p


def _clean_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ckpttui clean",
        description="Remove what jobs that are no longer running left behind: their temporary "
        "outputs (NAME.tmp-PID-XXXXXXXX) and lock files (NAME.lock). Lists them and asks first; "
        "never touches a job that still runs.",
    )
    p.add_argument("path", help="a folder (walked recursively) or one temporary output")
    p.add_argument("-y", "--yes", action="store_true", help="remove without asking")
    return p


def cmd_clean(args: argparse.Namespace) -> int:
    """Run ``ckpttui clean``."""
    from ckpttui.jobs.owner import find_leftovers, remove_leftover
    from ckpttui.units import human_bytes

    if not os.path.lexists(args.path):
        print(f"ckpttui clean: {args.path}: no such file or folder", file=sys.stderr)
        return 1
    items = find_leftovers(args.path)
    if not items:
        print("nothing to clean: no temporary outputs or lock files of jobs that are gone")
        return 0
    for item in items:
        what = "temporary output" if item.kind == "temp" else "lock file"
        print(
            f"{item.path}  {human_bytes(item.size)}  {what} of pid {item.pid} (no longer running)"
        )
    total = human_bytes(sum(item.size for item in items))
    if not args.yes:
        try:
            answer = input(f"Remove these {len(items)} ({total})? [y/N] ")
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing removed")
            return 1
    failed = 0
    for item in items:
        try:
            remove_leftover(item)
        except OSError as exc:
            print(f"ckpttui clean: {exc}", file=sys.stderr)
            failed += 1
    print(f"removed {len(items) - failed} of {len(items)} ({total})")
    return 1 if failed else 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """Run ``ckpttui inspect``."""
    from ckpttui.scan import FolderScan, summaries, write_json

    try:
        scan = FolderScan(
            args.path,
            jobs=getattr(args, "jobs", None),
            use_cache=not getattr(args, "no_cache", False),
        )
    except OSError as exc:
        print(f"ckpttui: {exc}", file=sys.stderr)
        return 1
    if args.json:
        from ckpttui.scanfile import scan_block

        # The "scan" block: what `ckpttui scan.json` needs to browse it elsewhere.
        write_json(scan, sys.stdout, extra={"scan": scan_block(scan.plan)})
    else:
        from ckpttui.textreport import print_summaries

        errors: list[tuple[str, str]] = []
        unsafe: set[str] = set()
        print_summaries(
            str(scan.plan.inv.root),
            summaries(scan, errors, unsafe),
            scan.rel,
            lambda: (sorted(unsafe), errors),
        )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run ``ckpttui demo``."""
    from ckpttui.demo import ensure_demo

    try:
        folder = ensure_demo(args.dir, regenerate=args.regenerate)
    except (OSError, RuntimeError) as exc:
        print(f"ckpttui demo: {exc}", file=sys.stderr)
        return 1
    if args.no_open:
        print(folder)
        return 0
    return open_app(str(folder))


def open_app(path: str) -> int:
    """Open the TUI on a path (until the app lands: print the inspect report)."""
    try:
        from ckpttui.ui.app import run_app
    except ImportError:
        return cmd_inspect(argparse.Namespace(path=path, json=False))
    return run_app(path)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``ckpttui`` and ``python -m ckpttui``."""
    try:
        return _main(argv)
    except BrokenPipeError:
        # `ckpttui inspect ... | head`: the reader went away; that is not an error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "inspect":
        return cmd_inspect(_inspect_parser().parse_args(argv[1:]))
    if argv and argv[0] == "demo":
        return cmd_demo(_demo_parser().parse_args(argv[1:]))
    if argv and argv[0] == "clean":
        return cmd_clean(_clean_parser().parse_args(argv[1:]))
    if argv and argv[0] in ("merge", "average", "export"):
        from ckpttui.jobcli import run_job_command

        return run_job_command(argv[0], argv[1:])
    if argv and argv[0] == "reclaim":
        from ckpttui.reclaimcli import run_reclaim_command

        return run_reclaim_command(argv[1:])
    if argv and argv[0] in ("verify", "diff"):
        from ckpttui.checkcli import run_check_command

        return run_check_command(argv[0], argv[1:])
    p = argparse.ArgumentParser(
        prog="ckpttui",
        description="Browse checkpoint folders: weights vs optimizer state, completeness, "
        "what can be reclaimed. SCAN.json (from inspect --json) opens that scan read-only. "
        "Commands: inspect PATH [--json], merge, average, export, reclaim PATH, verify PATH, "
        "diff A B, clean PATH (see `ckpttui COMMAND --help`), demo.",
    )
    p.add_argument(
        "path",
        nargs="?",
        default=".",
        help="folder or checkpoint file (default .), or a saved scan (SCAN.json)",
    )
    args = p.parse_args(argv)
    if not os.path.exists(args.path):
        print(f"ckpttui: {args.path}: no such file or folder", file=sys.stderr)
        return 1
    from ckpttui.scanfile import is_scan_path

    if is_scan_path(args.path):
        return open_scan(args.path)
    return open_app(args.path)


def open_scan(path: str) -> int:
    """Open a saved scan (``inspect --json`` output) read-only; not a scan: one line, exit 2."""
    from ckpttui.scanfile import ScanFileError, load_scan

    try:
        saved = load_scan(path)
    except ScanFileError as exc:
        print(f"ckpttui: {exc}", file=sys.stderr)
        return 2
    from ckpttui.ui.app import make_app

    make_app(path, saved=saved).run()
    return 0
