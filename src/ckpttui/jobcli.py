"""``ckpttui merge | average | export``: run a job headless, a progress bar on stderr or JSON lines.

Exit codes: 0 done, 1 the job failed (one line on stderr naming the file), 2 usage error,
128 + the signal number when interrupted (130 SIGINT, 143 SIGTERM, 129 SIGHUP: a dropped SSH
session): the job removed its temporary files and lock either way.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from ckpttui.jobs.events import JobError
from ckpttui.jobs.runner import JobSpec

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A job was stopped by a signal (SIGINT, SIGTERM or SIGHUP)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals(cancel: threading.Event) -> Iterator[list[int]]:
    """SIGINT, SIGTERM and SIGHUP set `cancel` and raise `Interrupted` (as Ctrl-C would).

    The raise is left out while an output is being placed or removed (the job then stops at its
    next cancel check), and happens once: later signals only set `cancel`. Yields the signals
    received. Outside the main thread, where handlers cannot be set, it does nothing.
    """
    from ckpttui.jobs.atomic import interruptible

    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    raised = False

    def handler(signum: int, _frame: Any) -> None:
        nonlocal raised
        received.append(signum)
        cancel.set()
        if not raised and interruptible():
            raised = True
            raise Interrupted(signum)

    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, handler)
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _exit_code(received: list[int], exc: BaseException | None = None) -> int:
    if isinstance(exc, Interrupted):
        return 128 + exc.signum
    return 128 + (received[0] if received else signal.SIGINT)


def _say(line: str) -> None:
    """Print to stderr; after SIGHUP the terminal is gone and writing fails: that is fine."""
    with contextlib.suppress(OSError, ValueError):
        print(line, file=sys.stderr, flush=True)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="output: NAME.safetensors, NAME.pt/.bin, or a folder with --max-shard-size",
    )
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON event per line on stdout instead of a progress bar",
    )


def _shape(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--flat",
        action="store_true",
        help="write a .pt output as the bare state dict, whatever the source's layout",
    )
    p.add_argument(
        "--recoverable",
        metavar="NAME",
        help="of a folder holding one file per module, take this one only (e.g. model)",
    )


def merge_parser() -> argparse.ArgumentParser:
    """``ckpttui merge``."""
    p = argparse.ArgumentParser(
        prog="ckpttui merge",
        description="Consolidate DeepSpeed ZeRO 1/2/3 rank files into one fp32 state dict "
        "(equal to DeepSpeed's zero_to_fp32, without its faults), join HF shards, merge a "
        "torch.distributed.checkpoint (FSDP) folder, or merge a LoRA adapter into its base "
        "(--base).",
    )
    p.add_argument(
        "src",
        help="DeepSpeed save folder (with `latest`) or tag folder, an HF sharded folder, a DCP "
        "folder (.metadata + .distcp files), or a LoRA adapter folder (with --base)",
    )
    _common(p)
    p.add_argument(
        "--base", metavar="BASE", help="LoRA: the base model (HF folder or state-dict file)"
    )
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), help="LoRA: cast floating tensors")
    p.add_argument(
        "--with-optimizer",
        action="store_true",
        help="DCP: every tensor of the checkpoint, not only the model weights",
    )
    p.add_argument("--workers", type=int, metavar="N", help="parallel reads (default: 4)")
    p.add_argument("--tag", help="DeepSpeed tag (default: the `latest` file)")
    p.add_argument("--max-shard-size", help="write shards + index into OUT, e.g. 5GB")
    p.add_argument("--exclude-frozen", action="store_true", help="leave frozen parameters out")
    p.add_argument(
        "--keep-half-frozen",
        action="store_true",
        help="keep bf16/fp16 frozen parameters in their dtype (DeepSpeed's behaviour)",
    )
    p.add_argument(
        "--deepspeed-compat",
        action="store_true",
        help="reproduce zero_to_fp32 exactly, including dropping ZeRO-1 frozen params",
    )
    return p


def average_parser() -> argparse.ArgumentParser:
    """``ckpttui average``."""
    p = argparse.ArgumentParser(
        prog="ckpttui average",
        description="Average the weights of N checkpoints of one model (float tensors summed in "
        "float32, integer tensors from the last input). Give the checkpoints, or a "
        "run folder with --last N or --best N.",
    )
    p.add_argument("src", nargs="+", help="checkpoints, or one run folder with --last/--best")
    _common(p)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--last", type=int, metavar="N", help="the last N checkpoints of RUN_DIR")
    group.add_argument(
        "--best", type=int, metavar="N", help="the best N by the metric the framework recorded"
    )
    p.add_argument(
        "--metric",
        help="metric for --best (default: the one the framework's own averaging ranks by)",
    )
    _shape(p)
    return p


def export_parser() -> argparse.ArgumentParser:
    """``ckpttui export``."""
    p = argparse.ArgumentParser(
        prog="ckpttui export",
        description="Weights only (optimizer, scheduler, rng dropped), as safetensors, a slim .pt "
        "in the framework's layout, or an HF folder (--config).",
    )
    p.add_argument("src", help="a checkpoint file or folder")
    _common(p)
    p.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), help="cast floating tensors")
    p.add_argument("--strip-prefix", metavar="P", help="remove a key prefix, e.g. module.")
    p.add_argument("--max-shard-size", help="write shards + index into OUT, e.g. 5GB")
    p.add_argument("--config", help="HF config.json (or model folder): write an HF model folder")
    _shape(p)
    return p


def _spec(kind: str, args: argparse.Namespace) -> JobSpec:
    common: dict[str, Any] = {"out": args.output, "force": args.force}
    if kind == "merge":
        return JobSpec(
            "merge",
            {
                **common,
                "src": args.src,
                "tag": args.tag,
                "max_shard_size": args.max_shard_size,
                "exclude_frozen": args.exclude_frozen,
                "upcast_frozen": not args.keep_half_frozen,
                "compat": args.deepspeed_compat,
                **({"base": args.base} if args.base else {}),
                **({"dtype": args.dtype} if args.dtype else {}),
                **({"with_optimizer": True} if args.with_optimizer else {}),
                **({"workers": args.workers} if args.workers else {}),
            },
        )
    if kind != "merge":
        common.update(flat=args.flat, recoverable=args.recoverable)
    if kind == "average":
        inputs = list(args.src)
        if args.last or args.best:
            if len(inputs) != 1:
                raise SystemExit("ckpttui average: --last/--best take exactly one run folder")
            return JobSpec(
                "average",
                {
                    **common,
                    "select": {
                        "root": inputs[0],
                        "last": args.last,
                        "best": args.best,
                        "metric": args.metric,
                    },
                },
            )
        elif len(inputs) < 2:
            raise SystemExit(
                "ckpttui average: give at least two checkpoints, or a run folder "
                "with --last N / --best N"
            )
        return JobSpec("average", {**common, "inputs": inputs})
    return JobSpec(
        "export",
        {
            **common,
            "src": args.src,
            "dtype": args.dtype,
            "strip_prefix": args.strip_prefix,
            "max_shard_size": args.max_shard_size,
            "config": args.config,
        },
    )


PARSERS = {"merge": merge_parser, "average": average_parser, "export": export_parser}


def run_job_command(kind: str, argv: list[str]) -> int:
    """Parse, run the job in this process, report; the exit code."""
    args = PARSERS[kind]().parse_args(argv)
    try:
        spec = _spec(kind, args)
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            return 2
        raise
    except (OSError, ValueError, JobError) as exc:
        print(f"ckpttui {kind}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        return run_interruptible(spec, lambda events, got: _run_json(spec, events, got))
    return run_interruptible(spec, lambda events, got: _run_bar(spec, events, got))


def run_interruptible(spec: JobSpec, consume: Callable[[Iterator[Any], list[int]], int]) -> int:
    """Run a spec in this process; `consume(events, signals received)` drives it and returns the
    exit code. SIGINT, SIGTERM or SIGHUP stop the job, whose temporary files are removed (exit
    128 + the signal)."""
    from ckpttui.jobs.atomic import discard_all
    from ckpttui.jobs.runner import run_spec

    cancel = threading.Event()
    events = None
    try:
        with stop_on_signals(cancel) as received:
            try:
                events = run_spec(spec, cancel)
                return consume(events, received)
            except KeyboardInterrupt as exc:
                close = getattr(events, "close", None)
                if close is not None:
                    with contextlib.suppress(Exception):
                        close()  # a job stopped at a yield removes its files here
                discard_all()
                _say(f"ckpttui {spec.kind}: interrupted; its temporary files were removed")
                return _exit_code(received, exc)
    finally:
        discard_all()


def _run_json(spec: JobSpec, events: Iterator[Any], received: list[int]) -> int:
    last = None
    try:
        for event in events:
            print(event.to_json(), flush=True)
            last = event
    except OSError:
        if not received:
            raise
    if last is not None and last.kind == "done":
        return 0
    return _exit_code(received) if received else 1


def progress_bar() -> Any:
    """A transient rich progress bar on stderr: description, bar, bytes, rate, ETA."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True, highlight=False),
        transient=True,
    )


def _run_bar(spec: JobSpec, events: Iterator[Any], received: list[int]) -> int:
    progress = progress_bar()
    last = None
    try:
        with progress:
            task = progress.add_task(spec.title, total=None)
            for event in events:
                last = event
                if event.bytes_total:
                    progress.update(task, total=event.bytes_total, completed=event.bytes_done)
                if event.kind == "log":
                    progress.console.print(f"  {event.message}", soft_wrap=True)
    except OSError:
        if not received:  # the terminal went away after SIGHUP: the job stops, cleaned up
            raise
    # Plain prints: one line each however wide the terminal (scripts grep them).
    if last is None:
        return _exit_code(received) if received else 1
    if last.kind == "error":
        _say(f"ckpttui {spec.kind}: {last.message}")
        return _exit_code(received) if received else 1
    _say(f"wrote {spec.output}")
    _say(last.message)
    return 0
