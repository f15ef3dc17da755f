"""The jobs pane: one row per merge / average / export job, with progress, rate, ETA and log."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Label, ProgressBar, Static

from ckpttui.jobs.events import Event
from ckpttui.jobs.runner import ChildJob, JobSpec, RateMeter
from ckpttui.units import human_bytes

_IDS = itertools.count(1)
_BYTES = re.compile(r"\b(\d{4,}) bytes\b")


def humanize(message: str) -> str:
    """Byte counts in a job's message for people: ``486539264 bytes`` -> ``464.0 MiB``."""
    return _BYTES.sub(lambda m: human_bytes(int(m.group(1))), message)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else f"{seconds // 60}:{seconds % 60:02d}"
    )


class JobRow(Vertical, can_focus=True):
    """One job: title, bar, bytes, rate, ETA, state, the last log lines."""

    def __init__(self, job_id: int, spec: JobSpec, **kwargs: Any) -> None:
        super().__init__(id=f"job-{job_id}", classes="job-row", **kwargs)
        self.job_id = job_id
        self.spec = spec
        self.state = "starting"
        self.meter = RateMeter()
        self.log_lines: list[str] = []
        self.last: Event | None = None
        self.child: ChildJob | None = None

    def compose(self) -> ComposeResult:
        """Title line, progress line, log line."""
        yield Label(self._title(), classes="job-title")
        with Horizontal(classes="job-progress"):
            yield ProgressBar(total=None, show_eta=False, classes="job-bar")
            yield Label("", classes="job-stats")
        yield Static("", classes="job-log")
        yield Static("", classes="job-result")

    def _title(self) -> Text:
        style = {
            "running": "bold",
            "done": "green",
            "failed": "red",
            "cancelled": "yellow",
            "starting": "dim",
        }.get(self.state, "")
        return Text.assemble(
            (f"#{self.job_id} ", "dim"), (self.spec.title, "bold"), (f"  {self.state}", style)
        )

    def apply(self, event: Event) -> None:
        """Show one event."""
        self.last = event
        bar = self.query_one(ProgressBar)
        if event.kind in ("start", "progress") and self.state == "starting":
            self.state = "running"
        if event.bytes_total:
            self.meter.update(event.bytes_done)
            bar.update(total=event.bytes_total, progress=event.bytes_done)
        if event.kind in ("log", "start") and event.message:
            self.log_lines = (self.log_lines + [humanize(event.message)])[-200:]
        result = self.query_one(".job-result", Static)
        if event.kind == "done":
            self.state = "done"
            bar.update(total=max(event.bytes_total, 1), progress=max(event.bytes_total, 1))
            self.log_lines = (self.log_lines + [humanize(event.message)])[-200:]
            # The verification line (tensors, size, sha256) stays whole, below the log.
            result.update(Text(humanize(event.message), style="green"))
        elif event.kind == "error":
            self.state = "cancelled" if event.data.get("cancelled") else "failed"
            self.log_lines = (self.log_lines + [humanize(event.message)])[-200:]
            # A job that ends before any progress stops pulsing: an empty, still bar.
            if bar.total is None:
                bar.update(total=1, progress=0)
            result.update(
                Text(
                    humanize(event.message), style="yellow" if self.state == "cancelled" else "red"
                )
            )
        stats = ""
        if event.bytes_total:
            stats = (
                f"{human_bytes(event.bytes_done)} / {human_bytes(event.bytes_total)}  "
                f"{human_bytes(self.meter.rate)}/s"
            )
            if self.state == "running":
                stats += f"  ETA {_duration(self.meter.eta(event.bytes_done, event.bytes_total))}"
        self.query_one(".job-stats", Label).update(stats)
        self.query_one(".job-title", Label).update(self._title())
        log = self.log_lines if self.running else self.log_lines[:-1]
        self.query_one(".job-log", Static).update(
            Text("\n".join(log[-3:]), style="dim", overflow="ellipsis", no_wrap=True)
        )

    @property
    def running(self) -> bool:
        """Whether the job has not ended yet."""
        return self.state in ("starting", "running")


class JobsPane(VerticalScroll):
    """Every job of this session, newest last; jobs run in child processes."""

    class JobEvent(Message):
        """A job's child process reported an event."""

        def __init__(self, job_id: int, event: Event) -> None:
            super().__init__()
            self.job_id, self.event = job_id, event

    class JobEnded(Message):
        """A job finished, failed or was cancelled."""

        def __init__(self, job_id: int, spec: JobSpec, event: Event) -> None:
            super().__init__()
            self.job_id, self.spec, self.event = job_id, spec, event

    def start(self, spec: JobSpec) -> int:
        """Start a job in a child process and add its row."""
        job_id = next(_IDS)
        row = JobRow(job_id, spec)
        self.mount(row)
        self.display = True
        row.child = ChildJob(spec)
        self._follow(job_id, row.child)
        self.call_after_refresh(self.scroll_end, animate=False)
        return job_id

    @work(thread=True, exit_on_error=False, group="jobs")
    def _follow(self, job_id: int, child: ChildJob) -> None:
        for event in child.events():
            self.post_message(self.JobEvent(job_id, event))

    @on(JobEvent)
    def _event(self, message: JobEvent) -> None:
        message.stop()
        row = self.query_one(f"#job-{message.job_id}", JobRow)
        following = self.scroll_y >= self.max_scroll_y - 1
        row.apply(message.event)
        if following:  # follow new output, unless the user scrolled up to read
            self.call_after_refresh(self.scroll_end, animate=False)
        if message.event.kind in ("done", "error"):
            self.post_message(self.JobEnded(message.job_id, row.spec, message.event))

    def rows(self) -> list[JobRow]:
        """Job rows, oldest first."""
        return list(self.query(JobRow))

    def cancel_selected(self) -> JobRow | None:
        """Cancel the focused job, else the newest running one."""
        focused = self.app.focused
        rows = [r for r in self.rows() if r.running]
        target = (
            focused
            if isinstance(focused, JobRow) and focused.running
            else (rows[-1] if rows else None)
        )
        if target is not None and target.child is not None:
            target.child.cancel()
            target.log_lines = (target.log_lines + ["cancelling..."])[-200:]
            target.query_one(".job-log", Static).update(
                Text("\n".join(target.log_lines[-3:]), style="yellow")
            )
        return target

    def running_count(self) -> int:
        """Jobs still running."""
        return sum(r.running for r in self.rows())

    def stop_all(self, then: Callable[[], None] | None = None) -> None:
        """Cancel every running job (on quit); wait for them to clean up in a thread, then `then`."""
        children = [r.child for r in self.rows() if r.running and r.child is not None]
        for child in children:
            child.cancel()
        self._wait_for(children, then)

    @work(thread=True, exit_on_error=False, group="jobs-stop")
    def _wait_for(self, children: list[ChildJob], then: Callable[[], None] | None) -> None:
        import subprocess
        import time

        deadline = time.monotonic() + 5
        for child in children:
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
        if then is not None:
            self.app.call_from_thread(then)
