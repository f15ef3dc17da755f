"""The ckpttui app: a lazy tree on the left, the folder or checkpoint view on the right."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from textual import on
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import ContentSwitcher, Footer, Input, TabbedContent, TabPane, Tree

from ckpttui.browse import dir_layout
from ckpttui.jobs.runner import JobSpec
from ckpttui.layouts import mergeable_titles
from ckpttui.ui.screens.help import HelpScreen
from ckpttui.ui.widgets.checkpoint_view import CheckpointView
from ckpttui.ui.widgets.curve import CurveView
from ckpttui.ui.widgets.folder_view import FolderView
from ckpttui.ui.widgets.jobs import JobsPane
from ckpttui.ui.widgets.tree import CheckpointTree, NodeData


class CkptApp(App[int]):
    """Browse checkpoint folders: weights against optimizer state, completeness, what to reclaim."""

    CSS_PATH = "ckpttui.tcss"
    TITLE = "ckpttui"
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help"),
        Binding("slash", "filter", "Filter"),
        Binding("s", "sort", "Sort"),
        Binding("r", "refresh", "Refresh", show=False),
        Binding("c", "curve", "Curve"),
        Binding("m", "job('merge')", "Merge"),
        Binding("a", "job('average')", "Average"),
        Binding("e", "job('export')", "Export"),
        Binding("x", "cancel_job", "Cancel job"),
        Binding("j", "toggle_jobs", "Jobs", show=False),
        Binding("1", "tab('tab-summary')", "Summary", show=False),
        Binding("2", "tab('tab-breakdown')", "Breakdown", show=False),
        Binding("3", "tab('tab-tensors')", "Tensors", show=False),
        Binding("escape", "close_filter", "Close filter", show=False),
    ]

    def __init__(self, path: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        path = os.path.abspath(path)
        self.start_file = path if os.path.isfile(path) else None
        self.root_path = os.path.dirname(path) if self.start_file else path
        self.root_layout = None if self.start_file else dir_layout(self.root_path)
        self.selected: NodeData | None = None

    def compose(self) -> ComposeResult:
        """Tree | (folder view with curve) or checkpoint view; footer."""
        with Horizontal(id="main"):
            yield CheckpointTree(self.root_path, self.root_layout, id="tree")
            with ContentSwitcher(initial="folder-pane", id="right"):
                with TabbedContent(id="folder-pane"):
                    with TabPane("Contents", id="tab-contents"):
                        yield FolderView(id="folder")
                    with TabPane("Curve", id="tab-curve"):
                        yield CurveView(id="curve")
                yield CheckpointView(id="ckpt-pane")
        yield JobsPane(id="jobs")
        yield Footer()

    def on_mount(self) -> None:
        """Show the root folder, or the file given on the command line with its breakdown."""
        self.query_one("#folder-filter", Input).display = False
        self.query_one(JobsPane).display = False
        base = os.path.dirname(self.root_path.rstrip(os.sep))
        self.query_one(FolderView).base = base
        self.query_one(CheckpointView).base = base
        if self.start_file:
            self._show_checkpoint(self.start_file, ())
            self.query_one(CheckpointView).show_tab("tab-breakdown")
        elif self.root_layout:
            self._show_checkpoint(self.root_path, ())
        else:
            self._show_folder(self.root_path)
        self.query_one(CheckpointTree).focus()

    # --- what the right pane shows -----------------------------------------------------------

    def _show_folder(self, path: str) -> None:
        self.query_one("#right", ContentSwitcher).current = "folder-pane"
        self.query_one(CurveView).show(None)
        self.query_one(FolderView).show(path)

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
        if data.kind == "dir":
            self._show_folder(data.path)
        elif data.kind == "checkpoint":
            self._show_checkpoint(data.path, ())
        elif data.kind == "key":
            self._show_checkpoint(data.path, data.key_path)
        elif data.entry is not None and data.entry.is_tensor_file:
            self._show_checkpoint(data.path, ())

    @on(CheckpointTree.Loaded)
    def _tree_loaded(self, message: CheckpointTree.Loaded) -> None:
        if not self.start_file or message.node is not self.query_one(CheckpointTree).root:
            return
        tree = self.query_one(CheckpointTree)
        for child in message.node.children:
            if child.data is not None and child.data.path == self.start_file:
                self.start_file = None
                self.selected = child.data
                tree.move_cursor(child)
                return

    @on(FolderView.ScanDone)
    def _scan_done(self, message: FolderView.ScanDone) -> None:
        from ckpttui.curves import build_curve

        self.query_one(CurveView).show(build_curve(message.inventory))

    @on(FolderView.Open)
    def _open_child(self, message: FolderView.Open) -> None:
        tree = self.query_one(CheckpointTree)
        node = tree.cursor_node
        if node is None:
            return
        node.expand()
        for child in node.children:
            if child.data is not None and child.data.path == message.path:
                tree.move_cursor(child)
                tree.focus()
                return

    # --- actions -----------------------------------------------------------------------------

    def _right_is_folder(self) -> bool:
        return self.query_one("#right", ContentSwitcher).current == "folder-pane"

    def action_help(self) -> None:
        """Show keys and colours."""
        self.push_screen(HelpScreen())

    def action_filter(self) -> None:
        """Filter names in the folder view, or tensor names in the checkpoint view."""
        if self._right_is_folder():
            self.query_one("#folder-pane", TabbedContent).active = "tab-contents"
            self.query_one(FolderView).open_filter()
        else:
            self.query_one(CheckpointView).open_filter()

    def action_close_filter(self) -> None:
        """Leave a filter: the folder filter is cleared and hidden, the tensor filter kept."""
        if self.focused is self.query_one("#tensor-filter", Input):
            self.query_one("#tensor-table").focus()
            return
        box = self.query_one("#folder-filter", Input)
        if box.display:
            box.value = ""
            box.display = False
            self.query_one("#folder-table").focus()

    def action_sort(self) -> None:
        """Cycle the sort key of the list on the right."""
        if self._right_is_folder():
            key = self.query_one(FolderView).cycle_sort()
        else:
            key = self.query_one(CheckpointView).cycle_sort()
        self.notify(f"sorted by {key}", timeout=1.5)

    def action_refresh(self) -> None:
        """Read the selection again from disk."""
        view = self.query_one(CheckpointView)
        view.path = None
        if self._right_is_folder():
            folder = self.query_one(FolderView)
            if folder.path:
                self._show_folder(folder.path)
        elif self.selected is not None:
            self._show_checkpoint(self.selected.path, self.selected.key_path)
        tree = self.query_one(CheckpointTree)
        node = tree.cursor_node
        if node is not None and node.data is not None and node.data.kind in ("dir", "checkpoint"):
            node.data.loaded = False
            node.remove_children()
            node.collapse()
            node.expand()
        self.notify("refreshed", timeout=1.0)

    def action_curve(self) -> None:
        """Show the training curve of the folder on the right."""
        if not self._right_is_folder():
            data = self.selected
            folder = os.path.dirname(data.path) if data else self.root_path
            self._show_folder(folder)
        self.query_one("#folder-pane", TabbedContent).active = "tab-curve"

    def action_tab(self, tab: str) -> None:
        """Switch the checkpoint view's tab."""
        if not self._right_is_folder():
            self.query_one(CheckpointView).show_tab(tab)

    # --- jobs --------------------------------------------------------------------------------

    def action_job(self, kind: str) -> None:
        """Open the form for a merge, average or export job on the selection."""
        from ckpttui.ui.jobrequest import JobRequestError, request_for

        tree = self.query_one(CheckpointTree)
        view = self.query_one(CheckpointView)
        try:
            request = request_for(kind, self.selected, tree.marked_paths(), view)
        except JobRequestError as exc:
            self.notify(str(exc), severity="warning")
            return
        from ckpttui.ui.screens.job_form import JobForm

        self.push_screen(JobForm(request), self._start_job)

    def _start_job(self, spec: JobSpec | None) -> None:
        if spec is None:
            return
        pane = self.query_one(JobsPane)
        job_id = pane.start(spec)
        self.notify(f"job #{job_id} started: {spec.title}", timeout=2)

    @on(JobsPane.JobEnded)
    def _job_ended(self, message: JobsPane.JobEnded) -> None:
        event = message.event
        if event.kind == "done":
            self.notify(f"job #{message.job_id} done: {message.spec.output}", timeout=5)
            self._reload_folder(os.path.dirname(os.path.abspath(message.spec.output)))
        elif event.data.get("cancelled"):
            self.notify(f"job #{message.job_id} cancelled; nothing written", severity="warning")
        else:
            self.notify(
                f"job #{message.job_id} failed: {event.message}", severity="error", timeout=10
            )

    def _reload_folder(self, folder: str) -> None:
        """Show a new output: reload the tree node of its folder and the folder view."""
        tree = self.query_one(CheckpointTree)
        for node in [tree.root, *tree.root.children]:
            stack = [node]
            while stack:
                current = stack.pop()
                data = current.data
                if data is not None and data.path == folder and data.loaded:
                    data.loaded = False
                    current.remove_children()
                    if current.is_expanded:
                        current.collapse()
                        current.expand()
                    break
                stack.extend(current.children)
        folder_view = self.query_one(FolderView)
        if self._right_is_folder() and folder_view.path == folder:
            self._show_folder(folder)

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
        """Quit; running jobs are cancelled and clean up their temporary files first."""
        self.query_one(JobsPane).stop_all()
        self.exit(0)

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        """Every action, in the command palette."""
        yield from super().get_system_commands(screen)
        yield SystemCommand("Help", "Keys and colours", self.action_help)
        yield SystemCommand("Filter", "Filter names in the view on the right", self.action_filter)
        yield SystemCommand("Sort", "Cycle the sort key", self.action_sort)
        yield SystemCommand("Refresh", "Read the selection again from disk", self.action_refresh)
        yield SystemCommand(
            "Training curve", "Metrics per step/epoch of the selected folder", self.action_curve
        )
        yield SystemCommand(
            "Merge",
            f"{mergeable_titles()} into one file",
            lambda: self.action_job("merge"),
        )
        yield SystemCommand(
            "Average",
            "Marked checkpoints, or the last/best N of a run",
            lambda: self.action_job("average"),
        )
        yield SystemCommand(
            "Export",
            "Weights only: safetensors, slim .pt or HF folder",
            lambda: self.action_job("export"),
        )
        yield SystemCommand("Cancel job", "Cancel the selected running job", self.action_cancel_job)
        yield SystemCommand("Jobs pane", "Show or hide the jobs pane", self.action_toggle_jobs)
        for tab, title in (
            ("tab-summary", "Summary"),
            ("tab-breakdown", "Breakdown"),
            ("tab-tensors", "Tensors"),
        ):
            yield SystemCommand(
                f"{title} tab",
                f"Show the checkpoint's {title} tab",
                lambda tab=tab: self.action_tab(tab),
            )


def make_app(path: str, **kwargs: Any) -> CkptApp:
    """The one factory: used by the CLI, the tests, the snapshot apps and the screenshot script."""
    return CkptApp(path, **kwargs)


def run_app(path: str) -> int:
    """Run the app on a path until the user quits."""
    make_app(path).run()
    return 0
