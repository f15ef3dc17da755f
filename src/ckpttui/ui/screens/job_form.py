"""The modal form for a merge, average or export job: inputs, output, options, size and free space."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, Select, Static

from ckpttui.jobs.runner import JobSpec
from ckpttui.units import human_bytes, parse_size


@dataclass
class JobRequest:
    """What the app knows when the user asks for a job."""

    kind: str
    """``merge``, ``average`` or ``export``."""
    inputs: list[str]
    """Selected checkpoint paths (one for merge/export; marked ones, or a run folder, for average)."""
    output: str
    """Suggested output path."""
    estimate: int = 0
    """Estimated output bytes (0: unknown)."""
    run_folder: str | None = None
    """For average without marks: the run folder to pick the last/best N from."""
    notes: list[str] = field(default_factory=list)


class JobForm(ModalScreen[JobSpec | None]):
    """Options for one job; returns a JobSpec, or None when cancelled."""

    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+s", "submit", "Start")]

    def __init__(self, request: JobRequest, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.request = request

    def compose(self) -> ComposeResult:
        """Title, inputs, output, the kind's options, size line, buttons."""
        r = self.request
        with Vertical(id="job-form"):
            yield Label(Text(f"{r.kind.capitalize()}", style="bold"), id="form-title")
            with VerticalScroll(id="form-body"):
                shown = r.inputs if r.inputs else [r.run_folder or ""]
                yield Static(
                    Text("from: " + "\n      ".join(shown), overflow="ellipsis"), id="form-inputs"
                )
                for note in r.notes:
                    yield Static(Text(note, style="dim"))
                yield Label("output (.safetensors, .pt/.bin, or a folder with a shard size)")
                yield Input(r.output, id="form-output")
                if r.kind == "merge":
                    yield Label("tag (empty: the `latest` file)")
                    yield Input("", id="form-tag")
                    yield Label("max shard size (empty: one file), e.g. 5GB")
                    yield Input("", id="form-shard")
                    yield Checkbox("leave frozen parameters out", id="form-exclude-frozen")
                    yield Checkbox(
                        "reproduce the ZeRO reference script exactly (drops ZeRO-1 frozen params)",
                        id="form-compat",
                    )
                elif r.kind == "average":
                    if r.run_folder:
                        yield Label("which checkpoints of the run")
                        yield Select(
                            [("last N", "last"), ("best N (recorded metric)", "best")],
                            value="last",
                            allow_blank=False,
                            id="form-mode",
                        )
                        yield Label("N")
                        yield Input("5", id="form-n", type="integer")
                        yield Label(
                            "metric for best N (empty: what the framework recorded; "
                            "runs that record several need one, e.g. WER)"
                        )
                        yield Input("", id="form-metric")
                else:
                    yield Label("dtype")
                    yield Select(
                        [("keep", "keep"), ("fp16", "fp16"), ("bf16", "bf16"), ("fp32", "fp32")],
                        value="keep",
                        allow_blank=False,
                        id="form-dtype",
                    )
                    yield Label("strip key prefix, e.g. module.")
                    yield Input("", id="form-strip")
                    yield Label("max shard size (empty: one file), e.g. 5GB")
                    yield Input("", id="form-shard")
                    yield Label("HF config.json or model folder (writes an HF model folder)")
                    yield Input("", id="form-config")
                yield Static("", id="form-size")
            with Horizontal(id="form-buttons"):
                yield Button("Start", variant="primary", id="form-start")
                yield Button("Cancel", id="form-cancel")

    def on_mount(self) -> None:
        """Show the size line and focus the output."""
        self._update_size()
        self.query_one("#form-output", Input).focus()

    @on(Input.Changed, "#form-output")
    def _output_changed(self) -> None:
        self._update_size()

    def _update_size(self) -> None:
        out = self.query_one("#form-output", Input).value.strip()
        folder = os.path.dirname(os.path.abspath(out)) or "."
        while folder and not os.path.isdir(folder):
            folder = os.path.dirname(folder)
        try:
            free = shutil.disk_usage(folder or ".").free
            free_text = human_bytes(free)
        except OSError:
            free, free_text = 0, "unknown"
        est = self.request.estimate
        line = Text.assemble(
            ("will write about ", "dim"),
            human_bytes(est) if est else "an unknown size",
            ("   free space ", "dim"),
            free_text,
        )
        if est and free and est > free:
            line.append("   not enough space", style="bold red")
        if out and os.path.exists(out):
            line.append(
                "\nexists: it will not be replaced (delete it or pick another name)", style="yellow"
            )
        self.query_one("#form-size", Static).update(line)

    def _value(self, selector: str) -> str:
        return self.query_one(selector, Input).value.strip()

    def build_spec(self) -> JobSpec:
        """The JobSpec the form describes; raises ValueError with a message for the user."""
        r = self.request
        out = self._value("#form-output")
        if not out:
            raise ValueError("give an output path")
        args: dict[str, Any] = {"out": out}
        if r.kind in ("merge", "export"):
            shard = self._value("#form-shard")
            if shard:
                parse_size(shard)
            args["max_shard_size"] = shard or None
        if r.kind == "merge":
            args.update(
                src=r.inputs[0],
                tag=self._value("#form-tag") or None,
                exclude_frozen=self.query_one("#form-exclude-frozen", Checkbox).value,
                compat=self.query_one("#form-compat", Checkbox).value,
            )
            return JobSpec("merge", args)
        if r.kind == "export":
            dtype = self.query_one("#form-dtype", Select).value
            args.update(
                src=r.inputs[0],
                dtype=None if dtype == "keep" else dtype,
                strip_prefix=self._value("#form-strip") or None,
                config=self._value("#form-config") or None,
            )
            return JobSpec("export", args)
        inputs = list(r.inputs)
        if r.run_folder:
            n_text = self._value("#form-n")
            if not n_text.isdigit() or int(n_text) < 1:
                raise ValueError("N must be a positive number")
            mode = self.query_one("#form-mode", Select).value
            # The child process picks them (reading the run's metadata is disk work).
            args["select"] = {
                "root": r.run_folder,
                mode: int(n_text),
                "metric": self._value("#form-metric") or None,
            }
            return JobSpec("average", args)
        if len(inputs) < 2:
            raise ValueError("averaging needs at least two checkpoints")
        args["inputs"] = inputs
        return JobSpec("average", args)

    def action_submit(self) -> None:
        """Start the job."""
        try:
            spec = self.build_spec()
        except (ValueError, OSError) as exc:
            self.notify(str(exc), severity="error")
            return
        self.dismiss(spec)

    def action_cancel(self) -> None:
        """Close without starting anything."""
        self.dismiss(None)

    @on(Button.Pressed, "#form-start")
    def _start(self) -> None:
        self.action_submit()

    @on(Button.Pressed, "#form-cancel")
    def _cancel(self) -> None:
        self.action_cancel()

    @on(Input.Submitted)
    def _submitted(self) -> None:
        self.action_submit()
