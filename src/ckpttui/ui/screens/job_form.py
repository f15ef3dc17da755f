"""The modal form for a merge, average or export job: inputs, output, options, size and free space."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Footer, Input, Label, Select, Static

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
    base: str = ""
    """Paths are shown relative to this folder (the parent of the app's root)."""
    merge_base: str | None = None
    """For a LoRA merge: the base model to merge the adapter into (None: not a LoRA merge)."""


_ITEMSIZE = {"fp16": 2, "bf16": 2, "fp32": 4}
_FLOATS = ("float16", "bfloat16", "float32", "float64", "half", "float", "double")


@dataclass(frozen=True)
class Preview:
    """What a job will read, and about how many bytes it will write."""

    reads: list[tuple[str, int]]
    """(path, bytes on disk) of each input."""
    estimate: int
    """Output bytes (0: unknown)."""
    rule: str = ""
    """How the inputs were chosen (average of a run)."""
    error: str | None = None
    """Why the options cannot run (shown before Start, not after)."""


def weights_bytes(path: str, dtype: str | None = None) -> int:
    """Bytes of a checkpoint's weights, with floating tensors cast to `dtype` (fp16/bf16/fp32)."""
    from ckpttui.inventory import scan
    from ckpttui.records import Category

    inv = scan(path)
    total = 0
    for recs in inv.records.values():
        for r in recs:
            if r.category != Category.WEIGHTS:
                continue
            if dtype in _ITEMSIZE and r.dtype in _FLOATS:
                total += r.numel * _ITEMSIZE[dtype]
            else:
                total += r.nbytes
    return total


def _disk_size(path: str) -> int:
    from ckpttui.browse import disk_usage

    return disk_usage(path)


class JobForm(ModalScreen[JobSpec | None]):
    """Options for one job; returns a JobSpec, or None when cancelled.

    Before Start, it previews the job: the files it will read (for the last/best N of a run,
    the very checkpoints chosen), the output's size for the chosen dtype, the free space.
    """

    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "submit", "Start"),
    ]

    class Previewed(Message):
        """The preview worker finished."""

        def __init__(self, token: int, preview: Preview, opts: dict[str, Any]) -> None:
            super().__init__()
            self.token, self.preview, self.opts = token, preview, opts

    def __init__(self, request: JobRequest, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.request = request
        self.preview: Preview | None = None
        self._preview_opts: dict[str, Any] = {}
        self._token = 0

    def compose(self) -> ComposeResult:
        """Title, inputs, output, the kind's options, size line, buttons."""
        r = self.request
        with Vertical(id="job-form"):
            yield Label(Text(f"{r.kind.capitalize()}", style="bold"), id="form-title")
            with VerticalScroll(id="form-body"):
                shown = [
                    os.path.relpath(p, r.base) if r.base else p
                    for p in (r.inputs if r.inputs else [r.run_folder or ""])
                ]
                yield Static(
                    Text("from: " + "\n      ".join(shown), overflow="fold"), id="form-inputs"
                )
                yield Static(Text("will read: ...", style="dim"), id="form-reads")
                for note in r.notes:
                    yield Static(Text(note, style="dim"))
                yield Label("output (.safetensors, .pt/.bin, or a folder with a shard size)")
                yield Input(r.output, id="form-output")
                if r.kind == "merge" and r.merge_base is not None:
                    yield Label("base model: HF folder (sharded or not) or state-dict file")
                    yield Input(r.merge_base, id="form-base")
                    yield Label("dtype of the merged weights")
                    yield Select(
                        [("keep", "keep"), ("fp32", "fp32"), ("bf16", "bf16"), ("fp16", "fp16")],
                        value="keep",
                        allow_blank=False,
                        id="form-dtype",
                    )
                    yield Label("max shard size (empty: one file), e.g. 5GB")
                    yield Input("", id="form-shard")
                elif r.kind == "merge":
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
                yield Button("Start (ctrl+s)", variant="primary", id="form-start")
                yield Button("Cancel (esc)", id="form-cancel")
        yield Footer()

    def on_mount(self) -> None:
        """Show the size line, preview the inputs, focus the output."""
        self._update_size()
        self._refresh_preview()
        # A LoRA adapter that names no local base: the base is what the user must give first.
        first = "#form-base" if self.request.merge_base == "" else "#form-output"
        self.query_one(first, Input).focus()

    @on(Input.Changed, "#form-output")
    def _output_changed(self) -> None:
        self._update_size()

    @on(Input.Changed, "#form-base")
    @on(Input.Changed, "#form-n")
    @on(Input.Changed, "#form-metric")
    @on(Select.Changed)
    def _options_changed(self) -> None:
        self._refresh_preview()

    def _options(self) -> dict[str, Any]:
        r = self.request
        opts: dict[str, Any] = {"kind": r.kind, "inputs": list(r.inputs), "run": r.run_folder}
        if r.kind == "export" or r.merge_base is not None:
            dtype = self.query_one("#form-dtype", Select).value
            opts["dtype"] = None if dtype == "keep" else str(dtype)
        if r.merge_base is not None:
            opts["base"] = self._value("#form-base")
        if r.kind == "average" and r.run_folder:
            n = self._value("#form-n")
            opts["n"] = int(n) if n.isdigit() else 0
            opts["mode"] = str(self.query_one("#form-mode", Select).value)
            opts["metric"] = self._value("#form-metric") or None
        return opts

    def _refresh_preview(self) -> None:
        self._token += 1
        self._preview(self._token, self._options(), self.request.estimate)

    @work(thread=True, exclusive=True, exit_on_error=False, group="form-preview")
    def _preview(self, token: int, opts: dict[str, Any], known: int) -> None:
        self.post_message(self.Previewed(token, compute_preview(opts, known), opts))

    @on(Previewed)
    def _previewed(self, message: Previewed) -> None:
        if message.token != self._token:
            return
        self.preview = p = message.preview
        self._preview_opts = message.opts
        reads = Text("will read: ", style="bold")
        if p.error:
            reads.append(p.error, style="bold red")
        else:
            if p.rule:
                reads.append(f"{p.rule}\n", style="dim")
            for path, size in p.reads:
                reads.append(f"\n  {os.path.basename(path.rstrip(os.sep))}")
                reads.append(f"  {human_bytes(size)}", style="dim")
        self.query_one("#form-reads", Static).update(reads)
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
        est = self.preview.estimate if self.preview is not None else self.request.estimate
        size = human_bytes(est) if est else ("..." if self.preview is None else "an unknown size")
        line = Text.assemble(
            ("will write ", "dim"),
            (os.path.basename(out.rstrip(os.sep)) or "?", "bold"),
            (", about ", "dim"),
            size,
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
        if r.kind == "merge" and r.merge_base is not None:
            base = self._value("#form-base")
            if not base:
                raise ValueError("give the base model to merge the adapter into")
            dtype = self.query_one("#form-dtype", Select).value
            args.update(src=r.inputs[0], base=base, dtype=None if dtype == "keep" else dtype)
            return JobSpec("merge", args)
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
        # A preview of other options (still being computed) does not stop the job.
        if (
            self.preview is not None
            and self.preview.error
            and self._preview_opts == self._options()
        ):
            self.notify(self.preview.error, severity="error")
            return
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


def compute_preview(opts: dict[str, Any], known: int = 0) -> Preview:
    """The inputs a job will read and its output size (runs in a worker: it reads headers)."""
    kind = opts["kind"]
    try:
        if kind == "average" and opts.get("run"):
            from ckpttui.jobs.events import JobError
            from ckpttui.jobs.select import select_best, select_last

            n = int(opts.get("n") or 0)
            if n < 1:
                return Preview([], 0, error="N must be a positive number")
            try:
                if opts.get("mode") == "best":
                    chosen = select_best(opts["run"], n, metric=opts.get("metric"))
                else:
                    chosen = select_last(opts["run"], n)
            except JobError as exc:
                return Preview([], 0, error=str(exc))
            paths = [str(p) for p in chosen.paths]
            reads = [(p, _disk_size(p)) for p in paths]
            return Preview(reads, weights_bytes(paths[-1]) if paths else 0, chosen.rule)
        inputs = list(opts.get("inputs") or [])
        if kind == "merge" and "base" in opts:
            return _lora_preview(inputs[0], opts["base"], opts.get("dtype"))
        reads = [(p, _disk_size(p)) for p in inputs]
        if kind == "average":
            return Preview(reads, weights_bytes(inputs[-1]) if inputs else 0)
        if kind == "export" and inputs:
            return Preview(reads, weights_bytes(inputs[0], opts.get("dtype")))
        return Preview(reads, known)
    except OSError as exc:
        return Preview([], 0, error=str(exc))


def _lora_preview(adapter: str, base: str, dtype: str | None) -> Preview:
    """An adapter and its base: both read, the base's weights written (in `dtype`)."""
    from ckpttui.layouts.lora import AdapterError, read_adapter

    if not base:
        return Preview([], 0, error="give the base model (an HF folder or a state-dict file)")
    if not os.path.exists(base):
        return Preview([], 0, error=f"{base}: no such file or folder")
    try:
        lora = read_adapter(adapter)
    except AdapterError as exc:
        return Preview([], 0, error=str(exc))
    rule = f"{lora.library} LoRA: {len(lora.pairs)} update(s)"
    if lora.replace:
        rule += f", {len(lora.replace)} replaced tensor(s)"
    reads = [(adapter, _disk_size(adapter)), (base, _disk_size(base))]
    return Preview(reads, weights_bytes(base, dtype), rule)
