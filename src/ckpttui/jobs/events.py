"""Progress events that jobs yield, one JSON line each, and the errors they raise.

A job is a plain generator function ``def job(..., cancel=None) -> Iterator[Event]``: it yields a
``start`` event, ``progress`` events batched in time by `ProgressClock`, ``log`` lines, and ends
with a ``done`` event carrying the verification line. It raises `JobError` (one line naming the
file) or `JobCancelled`; `drive` turns those into a final ``error`` event for the runner and
the CLI.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Kind = Literal["start", "progress", "log", "done", "error"]
KINDS: tuple[str, ...] = ("start", "progress", "log", "done", "error")


class JobError(Exception):
    """A job cannot go on; the message is one line and names the file concerned.

    Where it sits among ckpttui's errors, and how it reaches the user: ckpttui.errors.
    """


class JobCancelled(JobError):
    """The job's cancel event was set; its temporary files have been removed."""


@dataclass(frozen=True)
class Event:
    """One thing a job reports: it started, made progress, logged, finished, or failed."""

    kind: Kind
    """``start``, ``progress``, ``log``, ``done`` or ``error``."""
    job: str
    """Job name (``merge``, ``merge-hf``, ``average``...)."""
    bytes_done: int = 0
    """Bytes of output produced so far."""
    bytes_total: int = 0
    """Bytes of output expected in all (0 when unknown)."""
    message: str = ""
    """One human-readable line."""
    data: dict[str, Any] = field(default_factory=dict)
    """Plain JSON data: the verification for ``done``, the inputs and output for ``start``."""

    def to_json(self) -> str:
        """This event as one line of JSON (no newline)."""
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=False)

    @classmethod
    def from_json(cls, line: str) -> Event:
        """Parse a line written by `to_json`."""
        raw = json.loads(line)
        if not isinstance(raw, dict) or raw.get("kind") not in KINDS:
            raise ValueError(f"not a job event: {line[:80]!r}")
        return cls(
            kind=raw["kind"],
            job=str(raw.get("job", "")),
            bytes_done=int(raw.get("bytes_done", 0)),
            bytes_total=int(raw.get("bytes_total", 0)),
            message=str(raw.get("message", "")),
            data=dict(raw.get("data") or {}),
        )

    @property
    def fraction(self) -> float:
        """Share of the work done, 0.0 to 1.0 (0.0 when the total is unknown)."""
        if self.bytes_total <= 0:
            return 1.0 if self.kind == "done" else 0.0
        return min(1.0, self.bytes_done / self.bytes_total)


class ProgressClock:
    """Batches progress in time: `tick` returns an event at most every `interval` seconds."""

    def __init__(
        self,
        job: str,
        bytes_total: int,
        interval: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.job = job
        self.bytes_total = bytes_total
        self.bytes_done = 0
        self.interval = interval
        self._clock = clock
        self._last = clock()
        self._pending = False

    def tick(self, bytes_done: int, message: str = "") -> Event | None:
        """Record progress; return an event if the last one is at least `interval` old."""
        self.bytes_done = bytes_done
        now = self._clock()
        if now - self._last >= self.interval:
            self._last = now
            self._pending = False
            return self._event(message)
        self._pending = True
        return None

    def flush(self, message: str = "") -> Event | None:
        """The last progress event, if some progress has not been reported yet."""
        if not self._pending:
            return None
        self._pending = False
        self._last = self._clock()
        return self._event(message)

    def _event(self, message: str) -> Event:
        return Event("progress", self.job, self.bytes_done, self.bytes_total, message)


def check_cancel(cancel: threading.Event | None) -> None:
    """Raise `JobCancelled` if the job was asked to stop."""
    if cancel is not None and cancel.is_set():
        raise JobCancelled("cancelled")


def drive(events: Iterator[Event], job: str) -> Iterator[Event]:
    """Pass a job's events through, ending with an ``error`` event instead of an exception."""
    try:
        yield from events
    except JobCancelled as exc:
        yield Event("error", job, message=str(exc) or "cancelled", data={"cancelled": True})
    except JobError as exc:
        yield Event("error", job, message=str(exc), data={"cancelled": False})
