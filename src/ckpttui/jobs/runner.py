"""Run a job in a child process and stream its events as JSON lines.

The child is ``python -m ckpttui.jobs.runner SPEC_JSON``: it runs the job's generator and prints
one `Event` per line on stdout; SIGTERM, SIGINT or SIGHUP sets the job's cancel event, so the job
removes its temporary files and ends with an ``error`` event marked cancelled. The parent side,
`ChildJob`, reads those lines; the UI turns them into messages, never touching torch itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckpttui.jobs.events import Event, JobError, drive

KINDS = ("merge", "average", "export", "verify", "diff", "reclaim")


@dataclass(frozen=True)
class JobSpec:
    """What to run: the job kind and its keyword arguments (plain JSON data)."""

    kind: str
    """``merge``, ``average``, ``export``, ``verify`` (``{"path"}``), ``diff`` (``{"a", "b",
    "include_all"}``) or ``reclaim`` (``{"paths", "keep_last", "keep_best", "metric", "drop"}``)."""
    args: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the engine (``src``/``inputs``, ``out``, options)."""

    def to_json(self) -> str:
        """One line of JSON."""
        return json.dumps({"kind": self.kind, "args": self.args})

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        """Parse `to_json` output."""
        raw = json.loads(text)
        if raw.get("kind") not in KINDS:
            raise ValueError(f"unknown job kind {raw.get('kind')!r}")
        return cls(raw["kind"], dict(raw.get("args") or {}))

    @property
    def output(self) -> str:
        """The output path."""
        return str(self.args.get("out", ""))

    @property
    def title(self) -> str:
        """``merge global_step500 -> model.safetensors``."""
        src = (
            self.args.get("src")
            or self.args.get("inputs")
            or (self.args.get("select") or {}).get("root")
            or ""
        )
        if self.kind == "reclaim":
            paths = [str(p) for p in self.args.get("paths") or []]
            what = (
                f"{len(paths)} checkpoints"
                if len(paths) > 1
                else Path(paths[0]).name
                if paths
                else ""
            )
            return f"reclaim {what}"
        if isinstance(src, list):
            src = f"{len(src)} checkpoints" if len(src) > 1 else (src[0] if src else "")
        if self.kind in ("verify", "diff"):
            names = [Path(str(self.args.get(k, ""))).name for k in ("path", "a", "b")]
            return f"{self.kind} " + " ".join(n for n in names if n)
        return f"{self.kind} {Path(str(src)).name or src} -> {Path(self.output).name}"


def engine(spec: JobSpec) -> Callable[..., Iterator[Event]]:
    """The generator function that runs a spec (imported lazily: engines import torch)."""
    if spec.kind == "merge":
        from ckpttui.jobs.merge import merge

        return merge
    if spec.kind == "average":
        from ckpttui.jobs.average import average

        return average
    if spec.kind == "verify":
        from ckpttui.jobs.verify import verify

        return verify
    if spec.kind == "diff":
        from ckpttui.jobs.diff import diff

        return diff
    if spec.kind == "reclaim":
        from ckpttui.jobs.reclaim import reclaim

        return reclaim
    from ckpttui.jobs.export import export

    return export


def run_spec(spec: JobSpec, cancel: threading.Event | None = None) -> Iterator[Event]:
    """Run a spec in this process; failures end the stream as an ``error`` event."""
    args = dict(spec.args)
    try:
        fn = engine(spec)
        if spec.kind == "merge":
            events = fn(args.pop("src"), args.pop("out"), cancel=cancel, **args)
        elif spec.kind == "average":
            select = args.pop("select", None)
            if select:
                chosen = _select(select)
                yield Event(
                    "log",
                    "average",
                    message=chosen.summary(),
                )
                for note in chosen.notes:
                    yield Event("log", "average", message=note)
                args["inputs"] = [str(p) for p in chosen.paths]
            events = fn(args.pop("inputs"), args.pop("out"), cancel=cancel, **args)
        elif spec.kind == "verify":
            events = fn(args.pop("path"), cancel=cancel)
        elif spec.kind == "diff":
            events = fn(args.pop("a"), args.pop("b"), cancel=cancel, **args)
        elif spec.kind == "reclaim":
            events = fn(args.pop("paths"), cancel=cancel, **args)
        else:
            events = fn(args.pop("src"), args.pop("out"), cancel=cancel, **args)
    except (JobError, OSError, ValueError, TypeError) as exc:
        yield Event("error", spec.kind, message=str(exc), data={"cancelled": False})
        return
    yield from drive(_guard(events, spec.output), spec.kind)


def _select(select: dict[str, Any]) -> Any:
    """Pick the checkpoints of a run: ``{"root": DIR, "last": N}`` or ``{"root", "best", "metric"}``."""
    from ckpttui.jobs.select import select_best, select_last

    if select.get("last"):
        return select_last(select["root"], int(select["last"]))
    return select_best(select["root"], int(select["best"]), metric=select.get("metric"))


def _guard(events: Iterator[Event], output: str) -> Iterator[Event]:
    """OS errors (disk full, permissions) become JobErrors that name the file (else the output)."""
    try:
        yield from events
    except OSError as exc:
        where = exc.filename or output or "job"
        raise JobError(f"{where}: {exc.strerror or exc}") from None


def main(argv: list[str] | None = None) -> int:
    """Child entry point: run the spec in argv[1], print events as JSON lines."""
    argv = sys.argv[1:] if argv is None else argv
    spec = JobSpec.from_json(argv[0])
    cancel = threading.Event()

    def stop(_signum: int, _frame: Any) -> None:
        cancel.set()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)
    from ckpttui.jobs.atomic import discard_all

    last = None
    try:
        for event in run_spec(spec, cancel):
            print(event.to_json(), flush=True)
            last = event
    finally:
        discard_all()  # the parent went away (broken pipe): leave nothing behind
    return 0 if last is not None and last.kind == "done" else 1


class ChildJob:
    """A job running in a child process; iterate `events()` (blocking) from a worker thread."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        env = dict(os.environ)
        src = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ckpttui.jobs.runner", spec.to_json()],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.started = time.monotonic()
        # stderr is drained beside stdout: a child that writes more than a pipe buffer (64 KB)
        # to stderr would otherwise block, and so would the reader waiting on its stdout.
        self._stderr_tail: list[str] = []
        self._stderr_reader = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_reader.start()

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr_tail = (self._stderr_tail + [line.rstrip()])[-20:]

    def events(self) -> Iterator[Event]:
        """Events as the child prints them; a crash becomes a final ``error`` event."""
        assert self.proc.stdout is not None
        final = False
        for line in self.proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                event = Event.from_json(line)
            except ValueError:
                event = Event("log", self.spec.kind, message=line)
            final = final or event.kind in ("done", "error")
            yield event
        code = self.proc.wait()
        if not final:
            self._stderr_reader.join(timeout=5)
            err = [line for line in self._stderr_tail if line.strip()]
            tail = err[-1] if err else ""
            yield Event(
                "error",
                self.spec.kind,
                message=f"job process exited with code {code}" + (f": {tail}" if tail else ""),
                data={"cancelled": False},
            )

    def cancel(self) -> None:
        """Ask the job to stop; it removes its temporary files and reports ``cancelled``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)


class RateMeter:
    """Bytes per second (smoothed) and seconds left, from progress events."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._t0 = clock()
        self._last: tuple[float, int] | None = None
        self.rate = 0.0

    def update(self, bytes_done: int) -> None:
        """Feed the latest byte count."""
        now = self._clock()
        if self._last is not None and now > self._last[0]:
            inst = (bytes_done - self._last[1]) / (now - self._last[0])
            self.rate = inst if self.rate == 0 else 0.7 * self.rate + 0.3 * inst
        elif now > self._t0:
            self.rate = bytes_done / (now - self._t0)
        self._last = (now, bytes_done)

    def eta(self, bytes_done: int, bytes_total: int) -> float | None:
        """Seconds left, or None when unknown."""
        if self.rate <= 0 or bytes_total <= 0:
            return None
        return max(0.0, (bytes_total - bytes_done) / self.rate)


if __name__ == "__main__":
    raise SystemExit(main())
