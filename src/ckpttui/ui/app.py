"""The ckpttui app: a lazy tree on the left, the folder or checkpoint view on the right."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from textual import on
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal
from textual.filter import Monochrome
from textual.screen import Screen
from textual.widgets import ContentSwitcher, Footer, Static, TabbedContent, TabPane, Tabs, Tree
from textual.worker import Worker, WorkerState

from ckpttui.jobs.runner import JobSpec
from ckpttui.layouts import mergeable_titles
from ckpttui.paths import is_within
from ckpttui.scanfile import SavedScan
from ckpttui.ui.health import HealthBook
from ckpttui.ui.listing import DISK, Listing
from ckpttui.ui.live import LiveWatch
from ckpttui.ui.monochrome import ReadableMonochrome
from ckpttui.ui.screens.confirm import ConfirmScreen
from ckpttui.ui.screens.help import HelpScreen
from ckpttui.ui.widgets.checkpoint_view import CheckpointView
from ckpttui.ui.widgets.curve import CurveView
from ckpttui.ui.widgets.folder_view import FolderView
from ckpttui.ui.widgets.jobs import JobsPane
from ckpttui.ui.widgets.render import use_theme
from ckpttui.ui.widgets.tree import CheckpointTree, NodeData


class CkptApp(App[int]):
    """Browse checkpoint folders: weights against optimizer state, completeness, what to reclaim."""

    CSS_PATH = "ckpttui.tcss"
    TITLE = "ckpttui"
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help"),
        Binding("slash", "filter('footer')", "Filter"),
        Binding("slash", "filter", "Filter", show=False),
        # A key listed twice: the first (shown in the footer) only where it applies or fits, the
        # second (not shown) always, so the key works everywhere and explains itself.
        Binding("s", "sort('footer')", "Sort"),
        Binding("s", "sort", "Sort", show=False),
        Binding("S", "reverse_sort", "Reverse sort", show=False),
        Binding("r", "refresh", "Refresh", show=False),
        Binding("c", "curve", "Curve", show=False),
        Binding("m", "job('merge')", "Merge"),
        Binding("a", "job('average')", "Avg"),
        Binding("e", "job('export')", "Export"),
        Binding("v", "verify", "Verify"),
        Binding("d", "reclaim('footer')", "Reclaim"),
        Binding("d", "reclaim", "Reclaim", show=False),
        Binding("D", "diff('footer')", "Diff"),
        Binding("D", "diff", "Diff", show=False),
        Binding("x", "cancel_job", "Cancel"),
        Binding("J", "toggle_jobs", "Jobs", show=False),
        Binding("p", "toggle_live", "Pause live", show=False),
        Binding("1", "tab('tab-summary')", "Summary", show=False),
        Binding("2", "tab('tab-breakdown')", "Breakdown", show=False),
        Binding("3", "tab('tab-tensors')", "Tensors", show=False),
    ]
    KEYS = {
        "help": "?",
        "filter": "/",
        "sort": "s",
        "reverse_sort": "S",
        "refresh": "r",
        "curve": "c",
        "merge": "m",
        "average": "a",
        "export": "e",
        "verify": "v",
        "reclaim": "d",
        "diff": "D",
        "cancel_job": "x",
        "toggle_jobs": "J",
        "toggle_live": "p",
        "quit": "q",
    }
    """Keys shown beside the command palette's entries."""

    def __init__(
        self, path: str, saved: SavedScan | None = None, live: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        # NO_COLOR: greys that stay readable (Textual's own turns red text nearly invisible)
        self._filters = [
            ReadableMonochrome() if type(f) is Monochrome else f for f in self._filters
        ]
        self.saved = saved
        """A saved scan browsed read-only (``ckpttui scan.json``), or None for the disk."""
        self.listing: Listing = saved or DISK
        path = saved.root if saved else os.path.abspath(path)
        self.start_file = path if self.listing.is_file(path) else None
        self.root_path = os.path.dirname(path) if self.start_file else path
        self.root_layout = None if self.start_file else self.listing.dir_layout(self.root_path)
        self.live = live and saved is None
        """Whether the folder shown is watched for checkpoints being written."""
        if saved is not None:
            self.sub_title = saved.title()
            read_only(self)
        self.selected: NodeData | None = None
        self.quitting = False
        self.health = HealthBook()
        """What this session's verify jobs found (the folder and checkpoint views show it)."""

    def compose(self) -> ComposeResult:
        """Tree | (folder view with curve) or checkpoint view; jobs; footer."""
        if self.saved is not None:
            yield Static(self.sub_title, id="read-only")
        with Horizontal(id="main"):
            yield CheckpointTree(self.root_path, self.root_layout, self.listing, id="tree")
            with ContentSwitcher(initial="folder-pane", id="right"):
                with TabbedContent(id="folder-pane"):
                    with TabPane("Contents", id="tab-contents"):
                        folder = FolderView(id="folder")
                        folder.listing = self.listing
                        yield folder
                    with TabPane("Curve", id="tab-curve"):
                        yield CurveView(id="curve")
                view = CheckpointView(id="ckpt-pane")
                view.listing = self.listing
                yield view
        yield JobsPane(id="jobs")
        if self.live:
            yield LiveWatch(self._live_target, id="live")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        """Show the root folder, or the file given on the command line with its breakdown."""
        self.query_one(JobsPane).display = False
        for tabs in self.query(Tabs):
            tabs.can_focus = False  # tab goes tree -> list; 1 2 3 and c switch tabs
        self._theme_changed()
        self.theme_changed_signal.subscribe(self, lambda _theme: self._theme_changed())
        base = os.path.dirname(self.root_path.rstrip(os.sep))
        self.query_one(FolderView).base = base
        self.query_one(FolderView).live = "live" if self.live else ""
        self.query_one(CheckpointView).base = base
        self.query_one(FolderView).health = self.health
        self.query_one(CheckpointView).health = self.health
        self.watch(self.query_one(CheckpointTree), "marked", self._marks_changed, init=False)
        if self.start_file:
            self._show_checkpoint(self.start_file, ())
            self.query_one(CheckpointView).show_tab("tab-breakdown")
        elif self.root_layout:
            self._show_checkpoint(self.root_path, ())
        else:
            self._show_folder(self.root_path)
        self.query_one(CheckpointTree).focus()

    def _marks_changed(self) -> None:
        self.refresh_bindings()  # D Diff shows with two marks

    def on_resize(self) -> None:
        """The footer lists what fits: the palette hint, Filter and Sort from 100 columns."""
        self.query_one(Footer).show_command_palette = self.size.width >= 100
        self.refresh_bindings()

    def _theme_changed(self) -> None:
        use_theme(self.current_theme)
        folder = self.query_one(FolderView)
        if folder.path:
            folder.refresh_rows()

    # --- what the right pane shows -----------------------------------------------------------

    def _show_folder(self, path: str, force: bool = False) -> None:
        switcher = self.query_one("#right", ContentSwitcher)
        folder = self.query_one(FolderView)
        if folder.path != path or force:
            self.query_one(CurveView).show_inventory(None)
        switcher.current = "folder-pane"
        folder.show(path, force=force)

    def _show_checkpoint(self, path: str, key_prefix: tuple[str, ...]) -> None:
        self.query_one("#right", ContentSwitcher).current = "ckpt-pane"
        self.query_one(CheckpointView).show(path, key_prefix)

    @on(Tree.NodeHighlighted, "#tree")
    def _highlighted(self, event: Tree.NodeHighlighted[NodeData]) -> None:
        data = event.node.data
        if data is None or data.kind == "placeholder":
            return
        if self.start_file and data.path == self.root_path:
            return  # the tree's first highlight; the file given on the command line wins
        self.selected = data
        self.refresh_bindings()
        if data.kind == "dir":
            self._show_folder(data.path)
        elif data.kind == "checkpoint":
            self._show_checkpoint(data.path, ())
        elif data.kind == "key":
            self._show_checkpoint(data.path, data.key_path)
        elif data.entry is not None and data.entry.is_tensor_file:
            self._show_checkpoint(data.path, ())
        else:
            # A plain file: its folder, with the cursor on it (never a stale checkpoint pane).
            self._show_folder(os.path.dirname(data.path))
            self.query_one(FolderView).select_path(data.path)

    @on(CheckpointTree.Loaded)
    def _tree_loaded(self, message: CheckpointTree.Loaded) -> None:
        if not self.start_file or message.node is not self.query_one(CheckpointTree).root:
            return
        start, self.start_file = self.start_file, None
        self.query_one(CheckpointTree).reveal(start)

    @on(FolderView.ScanDone)
    def _scan_done(self, message: FolderView.ScanDone) -> None:
        self.query_one(CurveView).show_inventory(message.inventory)

    @on(CurveView.GoTo)
    def _curve_goto(self, message: CurveView.GoTo) -> None:
        tree = self.query_one(CheckpointTree)
        tree.reveal(message.path)
        tree.focus()

    @on(FolderView.Open)
    def _open_child(self, message: FolderView.Open) -> None:
        """Enter in the list drills in: a folder replaces the list, a checkpoint opens."""
        tree = self.query_one(CheckpointTree)
        listing = self.listing
        if listing.is_dir(message.path) and listing.dir_layout(message.path) is None:
            self._show_folder(message.path)
            tree.reveal(message.path)
            self.query_one("#folder-table").focus()
            return
        tree.reveal(message.path)
        tree.focus()

    @on(FolderView.Up)
    def _folder_up(self, message: FolderView.Up) -> None:
        """Backspace or left in the list: the parent folder, the cursor on where we were."""
        path = message.path.rstrip(os.sep)
        if path == self.root_path.rstrip(os.sep):
            return
        parent = os.path.dirname(path)
        self._show_folder(parent)
        folder = self.query_one(FolderView)
        folder.select_path(path)
        self.query_one(CheckpointTree).reveal(parent)
        self.query_one("#folder-table").focus()

    @on(Worker.StateChanged)
    def _worker_failed(self, event: Worker.StateChanged) -> None:
        """A background reader that raised is reported, never silently lost."""
        if event.state != WorkerState.ERROR:
            return
        error = event.worker.error
        self.notify(
            f"{event.worker.group or event.worker.name} failed: {type(error).__name__}: {error}",
            severity="error",
            timeout=10,
        )

    # --- actions -----------------------------------------------------------------------------

    def _right_is_folder(self) -> bool:
        return self.query_one("#right", ContentSwitcher).current == "folder-pane"

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Footer shows the keys that work here: Cancel only while a job runs."""
        if action == "cancel_job":
            return self.query_one(JobsPane).running_count() > 0
        if parameters and parameters[-1] == "footer":
            return self._in_footer(action)
        return True

    def _in_footer(self, action: str) -> bool:
        """Whether a key shows in the footer here (it works everywhere; 80 columns fit)."""
        if action in ("sort", "filter"):
            return self.size.width >= 100
        marked = self.query_one(CheckpointTree).marked
        if action == "diff":
            return len(marked) == 2
        if action == "reclaim":
            return bool(marked) or (self.selected is not None and self.selected.kind == "dir")
        return True

    def action_help(self) -> None:
        """Show keys and colours."""
        self.push_screen(HelpScreen())

    def action_filter(self, _where: str = "") -> None:
        """Filter names in the folder view, or tensor names in the checkpoint view."""
        if self._right_is_folder():
            self.query_one("#folder-pane", TabbedContent).active = "tab-contents"
            self.query_one(FolderView).open_filter()
        else:
            self.query_one(CheckpointView).open_filter()

    def action_sort(self, _where: str = "") -> None:
        """Cycle the sort key of the list on the right."""
        if self._right_is_folder():
            key = self.query_one(FolderView).cycle_sort()
        else:
            key = self.query_one(CheckpointView).cycle_sort()
        self.notify(f"sorted by {key} (S reverses)", timeout=1.5)

    def action_reverse_sort(self) -> None:
        """Reverse the order of the list on the right."""
        view: FolderView | CheckpointView = (
            self.query_one(FolderView)
            if self._right_is_folder()
            else self.query_one(CheckpointView)
        )
        view.reverse = not view.reverse

    def action_refresh(self) -> None:
        """Read the selection again from disk."""
        if self.saved is not None:
            self.action_read_only("refresh")
            return
        view = self.query_one(CheckpointView)
        view.path = None
        if self._right_is_folder():
            folder = self.query_one(FolderView)
            if folder.path:
                self._show_folder(folder.path, force=True)
                self.query_one(CheckpointTree).reload(folder.path)
        elif self.selected is not None:
            self._show_checkpoint(self.selected.path, self.selected.key_path)
        tree = self.query_one(CheckpointTree)
        node = tree.cursor_node
        if node is not None and node.data is not None and node.data.kind in ("dir", "checkpoint"):
            tree.reload(node.data.path)
        self.notify("refreshed", timeout=1.0)

    def action_curve(self) -> None:
        """Show the training curve of the folder on the right."""
        if not self._right_is_folder():
            data = self.selected
            folder = os.path.dirname(data.path) if data else self.root_path
            self._show_folder(folder)
        self.query_one("#folder-pane", TabbedContent).active = "tab-curve"
        self.query_one(CurveView).focus()

    def action_tab(self, tab: str) -> None:
        """Switch the checkpoint view's tab."""
        if not self._right_is_folder():
            self.query_one(CheckpointView).show_tab(tab)

    # --- jobs --------------------------------------------------------------------------------

    def _read_only(self, what: str) -> bool:
        """True (and says why) in a saved scan: the palette reaches actions the keys do not."""
        if self.saved is None:
            return False
        self.action_read_only(what)
        return True

    def action_job(self, kind: str) -> None:
        """Open the form for a merge, average or export job on the selection."""
        from ckpttui.ui.jobrequest import JobRequestError, request_for

        if self._read_only(kind):
            return

        tree = self.query_one(CheckpointTree)
        view = self.query_one(CheckpointView)
        try:
            request = request_for(kind, self.selected, tree.marked_paths(), view)
        except JobRequestError as exc:
            self.notify(str(exc), severity="warning", timeout=6)
            return
        request.base = self.query_one(FolderView).base
        from ckpttui.ui.screens.job_form import JobForm

        self.push_screen(JobForm(request), self._start_job)

    def _targets(self) -> list[str]:
        """What v and d act on: the marked checkpoints, else the list's row, else the tree's node."""
        marked = self.query_one(CheckpointTree).marked_paths()
        if marked:
            return marked
        folder = self.query_one(FolderView)
        row = folder.current_path()
        if self._right_is_folder() and self.focused is folder.query_one("#folder-table") and row:
            return [row]
        if self.selected is not None and self.selected.kind != "placeholder":
            return [self.selected.path]
        return [self.root_path]

    def action_verify(self) -> None:
        """Verify the selection (or the marked checkpoints) in a job: CRCs, bounds, NaN/Inf."""
        if self._read_only("verify"):
            return
        for path in self._targets():
            self._start_job(JobSpec("verify", {"path": path}))

    def action_diff(self, _where: str = "") -> None:
        """Diff the two marked checkpoints (A marked first) in a job; the view opens when done."""
        if self._read_only("diff"):
            return
        marked = self.query_one(CheckpointTree).marked_paths()
        if len(marked) != 2:
            self.notify(
                f"Mark two checkpoints with space (A first, then B), then press D "
                f"({len(marked)} marked)",
                severity="warning",
                timeout=6,
            )
            return
        self._start_job(JobSpec("diff", {"a": marked[0], "b": marked[1], "include_all": False}))

    def action_reclaim(self, _where: str = "") -> None:
        """The reclaim plan for the selected run folder or the marked checkpoints."""
        if self._read_only("reclaim"):
            return
        paths = self._targets()
        marked = self.query_one(CheckpointTree).marked_paths()
        if not marked and (not self.listing.is_dir(paths[0]) or self.listing.dir_layout(paths[0])):
            self.notify(
                "Select a run folder (its checkpoints but the newest and the best are slimmed) "
                "or mark the checkpoints to slim with space, then press d",
                severity="warning",
                timeout=6,
            )
            return
        from ckpttui.ui.screens.reclaim import ReclaimScreen

        base = self.query_one(FolderView).base
        self.push_screen(ReclaimScreen(paths, base, marked=bool(marked)), self._start_job)

    def _start_job(self, spec: JobSpec | None) -> None:
        if spec is None or self._read_only(spec.kind):
            return
        pane = self.query_one(JobsPane)
        job_id = pane.start(spec)
        self.notify(f"job #{job_id} started: {spec.title}", timeout=2)
        self.refresh_bindings()

    @on(JobsPane.JobEnded)
    def _job_ended(self, message: JobsPane.JobEnded) -> None:
        self.refresh_bindings()
        event = message.event
        kind = message.spec.kind
        if kind == "reclaim":
            self._rewritten(list(message.spec.args.get("paths", [])))
        if event.kind == "done" and kind == "verify":
            self._verified(message.job_id, event.data)
        elif event.kind == "done" and kind == "diff":
            from ckpttui.ui.screens.diff import DiffScreen

            self.push_screen(DiffScreen(event.data, self.query_one(FolderView).base))
        elif event.kind == "done" and kind == "reclaim":
            self.notify(f"job #{message.job_id} done: {event.message}", timeout=5)
        elif event.kind == "done":
            self.notify(f"job #{message.job_id} done: {message.spec.output}", timeout=5)
            self._reload_folder(os.path.dirname(os.path.abspath(message.spec.output)))
        elif event.data.get("cancelled"):
            self.notify(f"job #{message.job_id} cancelled; nothing written", severity="warning")
        else:
            self.notify(
                f"job #{message.job_id} failed: {event.message}", severity="error", timeout=10
            )

    def _verified(self, job_id: int, report: dict[str, Any]) -> None:
        """Show a verify report: the health column, the Tensors tab's statistics, a toast."""
        verdicts = self.health.add(report)
        sick = [v for v in verdicts if not v.healthy]
        name = os.path.basename(str(report.get("path", "")).rstrip(os.sep))
        if sick:
            problems = sum(len(v.problems) for v in sick)
            self.notify(
                f"verify {name}: {len(sick)} of {len(verdicts)} checkpoint(s) with "
                f"{problems} problem(s); the Tensors tab names them",
                severity="error",
                timeout=10,
            )
        else:
            self.notify(f"verify {name}: {len(verdicts)} checkpoint(s) healthy", timeout=5)
        self.query_one(FolderView).refresh_rows()
        self.query_one(CheckpointView).health_changed()

    def _rewritten(self, paths: list[str]) -> None:
        """After a reclaim: sizes are read again (cursor kept); verdicts of rewritten files go."""
        folders: set[str] = set()
        for path in paths:
            path = os.path.abspath(path)
            self.health.forget(path)
            folders.update({path, os.path.dirname(path)})
        tree = self.query_one(CheckpointTree)
        for folder in sorted(folders):
            tree.reload(folder)
        folder_view = self.query_one(FolderView)
        shown = folder_view.path
        if shown is not None and any(is_within(f, shown) for f in folders):
            folder_view.show(shown, force=True)
        view = self.query_one(CheckpointView)
        if not self._right_is_folder() and view.path and self.selected is not None:
            view.path = None
            self._show_checkpoint(self.selected.path, self.selected.key_path)

    def _reload_folder(self, folder: str) -> None:
        """Show a new output: the tree and the list update in place; cursor and marks stay."""
        self.query_one(CheckpointTree).reload(folder)
        folder_view = self.query_one(FolderView)
        if folder_view.path == folder:
            folder_view.show(folder, force=True)

    def action_cancel_job(self) -> None:
        """Cancel the selected (or newest) running job."""
        row = self.query_one(JobsPane).cancel_selected()
        if row is None:
            self.notify("no running job", timeout=1.5)

    def action_toggle_jobs(self) -> None:
        """Show or hide the jobs pane."""
        pane = self.query_one(JobsPane)
        pane.display = not pane.display

    async def action_quit(self) -> None:
        """Quit; with jobs running, ask first, then cancel them (they remove their temp files)."""
        pane = self.query_one(JobsPane)
        running = pane.running_count()
        if not running:
            self.exit(0)
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self.quitting = True
                self.notify(f"cancelling {running} job(s)...", timeout=10)
                pane.stop_all(then=lambda: self.exit(0))

        plural = "s" if running > 1 else ""
        self.push_screen(
            ConfirmScreen(
                f"{running} job{plural} running. Quit and cancel {'them' if plural else 'it'}?",
                "Cancelled jobs remove their temporary files; nothing half-written is left.",
            ),
            answer,
        )

    # --- live and read-only ---------------------------------------------------------------------

    def _live_target(self) -> tuple[str | None, set[str]]:
        """The folder shown on the right and its children still in progress (for LiveWatch)."""
        folder = self.query_one(FolderView)
        if not self._right_is_folder() or folder.path is None:
            return None, set()
        return folder.path, folder.in_progress()

    @on(LiveWatch.Changed)
    def _live_changed(self, message: LiveWatch.Changed) -> None:
        """Something was written into the folder shown: list it again, cursor and marks kept."""
        folder = self.query_one(FolderView)
        folder.writing = message.writing
        if folder.path == message.folder:
            folder.show(message.folder, force=True)
        self.query_one(CheckpointTree).reload(message.folder)

    def action_toggle_live(self) -> None:
        """Pause or resume watching the folder for checkpoints being written."""
        if self.saved is not None:
            self.action_read_only("live")
            return
        watch = next(iter(self.query(LiveWatch)), None)
        if watch is None:
            self.notify("live is off (started with live=False)", timeout=2)
            return
        watch.paused = not watch.paused
        folder = self.query_one(FolderView)
        folder.live = "paused" if watch.paused else "live"
        folder.refresh_rows()
        self.notify("live paused (p resumes)" if watch.paused else "live: watching", timeout=1.5)

    def action_read_only(self, what: str) -> None:
        """Say why a job, reclaim, verify or refresh is off in a saved scan."""
        saved = self.saved
        where = f" on {saved.host}" if saved is not None and saved.host else " where the files are"
        then = f"run ckpttui{where} to {what}" if what != "live" else "a saved scan never changes"
        self.notify(
            f"{what} is off: this is a read-only saved scan ({saved.source if saved else ''}); "
            + then,
            severity="warning",
            timeout=6,
        )

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        """Every action, in the command palette, with its key."""
        yield from super().get_system_commands(screen)
        k = self.KEYS

        def cmd(title: str, key: str, help: str, callback: Any) -> SystemCommand:
            return SystemCommand(f"{title}  [{key}]", help, callback)

        yield cmd("Help", k["help"], "Keys and colours", self.action_help)
        yield cmd(
            "Filter", k["filter"], "Filter names in the view on the right", self.action_filter
        )
        yield cmd("Sort", k["sort"], "Cycle the sort key", self.action_sort)
        yield cmd("Reverse sort", k["reverse_sort"], "Reverse the order", self.action_reverse_sort)
        yield cmd(
            "Refresh", k["refresh"], "Read the selection again from disk", self.action_refresh
        )
        yield cmd(
            "Training curve",
            k["curve"],
            "Metrics per step/epoch of the selected folder",
            self.action_curve,
        )
        yield cmd(
            "Merge",
            k["merge"],
            f"{mergeable_titles()} into one file",
            lambda: self.action_job("merge"),
        )
        yield cmd(
            "Average",
            k["average"],
            "Marked checkpoints, or the last/best N of a run",
            lambda: self.action_job("average"),
        )
        yield cmd(
            "Export",
            k["export"],
            "Weights only: safetensors, slim .pt or HF folder",
            lambda: self.action_job("export"),
        )
        yield cmd(
            "Verify",
            k["verify"],
            "CRCs, bounds, NaN/Inf and statistics of the selection or the marked checkpoints",
            self.action_verify,
        )
        yield cmd(
            "Reclaim space",
            k["reclaim"],
            "Slim a run's checkpoints in place (keep the newest and the best): the plan first",
            self.action_reclaim,
        )
        yield cmd(
            "Diff",
            k["diff"],
            "What changed between the two marked checkpoints, per module and tensor",
            self.action_diff,
        )
        yield cmd(
            "Cancel job", k["cancel_job"], "Cancel the selected running job", self.action_cancel_job
        )
        yield cmd(
            "Jobs pane", k["toggle_jobs"], "Show or hide the jobs pane", self.action_toggle_jobs
        )
        yield cmd(
            "Pause or resume live",
            k["toggle_live"],
            "Watch the folder shown for checkpoints being written",
            self.action_toggle_live,
        )
        for n, (tab, title) in enumerate(
            (
                ("tab-summary", "Summary"),
                ("tab-breakdown", "Breakdown"),
                ("tab-tensors", "Tensors"),
            ),
            start=1,
        ):
            yield cmd(
                f"{title} tab",
                str(n),
                f"Show the checkpoint's {title} tab",
                lambda tab=tab: self.action_tab(tab),
            )


READ_ONLY_KEYS = {
    "m": "merge",
    "a": "average",
    "e": "export",
    "d": "reclaim",
    "v": "verify",
    "D": "diff",
}
"""Keys that would write or read the files: in a saved scan they say why they are off."""


def read_only(app: CkptApp) -> None:
    """Bind the keys that need the files to `read_only` (before any binding of theirs)."""
    for key, what in READ_ONLY_KEYS.items():
        app._bindings.key_to_bindings[key] = [
            Binding(key, f"read_only({what!r})", what.capitalize(), show=False)
        ]


def make_app(path: str, **kwargs: Any) -> CkptApp:
    """The one factory: used by the CLI, the tests, the snapshot apps and the screenshot script.

    A ``*.json`` path is a saved scan (``inspect --json``), opened read-only.
    """
    from ckpttui.scanfile import is_scan_path, load_scan

    if "saved" not in kwargs and is_scan_path(path):
        kwargs["saved"] = load_scan(path)
    return CkptApp(path, **kwargs)


def run_app(path: str) -> int:
    """Run the app on a path until the user quits."""
    make_app(path).run()
    return 0
