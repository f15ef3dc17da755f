"""``ckpttui reclaim``: slim a run's checkpoints in place, after showing the plan.

Exit codes: 0 done (or a dry run, or nothing to do), 1 the job failed or the answer was no,
2 usage error or no ``--yes`` where nobody can be asked (not a terminal), 128 + the signal number
when interrupted (each checkpoint is then either original or slimmed).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from typing import Any

from ckpttui.jobcli import _exit_code, _say, progress_bar, run_interruptible
from ckpttui.jobs.events import Event, JobError
from ckpttui.jobs.runner import JobSpec


def reclaim_parser() -> argparse.ArgumentParser:
    """``ckpttui reclaim``."""
    p = argparse.ArgumentParser(
        prog="ckpttui reclaim",
        description="Rewrite the checkpoints of a run in place without their optimizer state, "
        "keeping the newest and the best whole. Each checkpoint keeps its name and layout and "
        "still loads for inference; a kill at any moment leaves each one original or slimmed.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="a run folder, or checkpoints")
    p.add_argument("--keep-last", type=int, default=1, metavar="N", help="newest kept (1)")
    p.add_argument(
        "--keep-best", type=int, default=1, metavar="N", help="best kept, by the metric (1)"
    )
    p.add_argument("--metric", help="metric for --keep-best (default: the framework's own)")
    p.add_argument(
        "--drop",
        choices=("optimizer", "training"),
        default="optimizer",
        help="optimizer state only (default), or also scheduler, scaler, rng and EMA",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    p.add_argument("-y", "--yes", action="store_true", help="do it without asking")
    p.add_argument(
        "--json", action="store_true", help="the plan (--dry-run) or the job's events as JSON"
    )
    return p


def run_reclaim_command(argv: list[str]) -> int:
    """Parse, plan, ask, run; the exit code."""
    from ckpttui.jobs.reclaim import plan_reclaim
    from ckpttui.units import human_bytes

    args = reclaim_parser().parse_args(argv)
    options: dict[str, Any] = {
        "keep_last": args.keep_last,
        "keep_best": args.keep_best,
        "metric": args.metric,
        "drop": args.drop,
    }
    try:
        plan = plan_reclaim(args.paths, **options)
    except JobError as exc:
        print(f"ckpttui reclaim: {exc}", file=sys.stderr)
        return 1
    if args.json and args.dry_run:
        json.dump(plan.to_dict(), sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    if not args.json:
        print("\n".join(plan.lines()))
    if args.dry_run:
        return 0
    if not plan.slimmed and not any(i.leftovers for i in plan.items if i.action != "refuse"):
        _say("nothing to reclaim")
        return 0
    if not args.yes:
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            _say("ckpttui reclaim: not a terminal; pass --yes to reclaim without asking")
            return 2
        try:
            answer = input(
                f"Slim {len(plan.slimmed)} checkpoints, freeing "
                f"{human_bytes(plan.total_freed)}? [y/N] "
            )
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing changed")
            return 1
    spec = JobSpec("reclaim", {"paths": [str(p) for p in args.paths], **options})
    return _run(spec, args.json)


def _run(spec: JobSpec, as_json: bool) -> int:
    def consume(events: Iterator[Event], received: list[int]) -> int:
        try:
            last = _json(events) if as_json else _bar(spec, events)
        except OSError:
            if not received:  # the terminal went away after SIGHUP: the job stops, cleaned up
                raise
            return _exit_code(received)
        if last is None or last.kind != "done":
            if not as_json:
                _say(f"ckpttui reclaim: {last.message if last else 'no result'}")
            return _exit_code(received) if received else 1
        if not as_json:
            _say(last.message)
        return 0

    return run_interruptible(spec, consume)


def _json(events: Iterator[Event]) -> Event | None:
    last = None
    for event in events:
        print(event.to_json(), flush=True)
        last = event
    return last


def _bar(spec: JobSpec, events: Iterator[Event]) -> Event | None:
    progress = progress_bar()
    last = None
    with progress:
        task = progress.add_task(spec.title, total=None)
        for event in events:
            last = event
            if event.bytes_total:
                progress.update(task, total=event.bytes_total, completed=event.bytes_done)
            if event.kind == "log" and not event.data.get("plan_line"):
                progress.console.print(f"  {event.message}", soft_wrap=True)
    return last
