"""The lazy checkpoint tree: folders, checkpoints, files, and the key tree inside tensor files."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from rich.style import Style
from rich.text import Text
from textual import events, on, work
from textual.binding import Binding
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from ckpttui.browse import Entry
from ckpttui.paths import is_within
from ckpttui.records import TensorRecord
from ckpttui.ui.listing import DISK, Listing
from ckpttui.units import human_bytes

LOADING = "loading..."
CHUNK = 1000


@dataclass
class NodeData:
    """What a tree node stands for."""

    kind: str
    """``dir``, ``checkpoint``, ``file``, ``key`` or ``placeholder``."""
    path: str
    """Absolute path of the file or folder (the file, for keys)."""
    entry: Entry | None = None
    loaded: bool = False
    key_path: tuple[str, ...] = ()
    """For keys: the path inside the file."""
    children: dict[str, Any] = field(default_factory=dict)
    """For keys and loaded files: the nested key tree below."""
    nbytes: int = 0


def key_tree(records: list[TensorRecord]) -> dict[str, Any]:
    """Nest tensor records by key path, splitting state-dict keys on '.': leaves are records."""
    root: dict[str, Any] = {}
    for rec in records:
        parts: list[str] = []
        for key in rec.path:
            parts.extend(key.split(".") if "." in key else [key])
        node = root
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):  # a tensor and a prefix share a name
                child = node.setdefault(part + "/", {})
            node = child
        node[parts[-1] if parts else rec.name] = rec
    return root


def subtree_bytes(node: Any) -> int:
    """Bytes of all tensors under a key-tree node."""
    if isinstance(node, TensorRecord):
        return node.nbytes
    return sum(subtree_bytes(v) for v in node.values())


def entry_label(entry: Entry) -> Text:
    """A tree label: name, then layout and step for checkpoints, size for files."""
    if entry.error:
        return Text.assemble((entry.name, "red"), (f"  {entry.error}", "red dim"))
    if entry.kind == "checkpoint":
        label = Text.assemble((entry.name, "bold"), (f"  {entry.layout}", "cyan"))
        if entry.step is not None:
            label.append(f"  #{entry.step}", style="dim")
        return label
    if entry.kind == "dir":
        return Text(entry.name + "/", style="bold")
    label = Text(entry.name)
    label.append(f"  {human_bytes(entry.size)}", style="dim")
    return label


def _fit(text: Text, name: str, room: int) -> Text:
    """Shorten a label to `room` cells: the suffix (size, layout) goes, then the name's middle."""
    plain = text.plain
    at = plain.rfind(name) if name else -1
    if at < 0:
        head = (room - 1) * 2 // 3
        return Text.assemble(text[:head], ("…", "dim"), text[-(room - 1 - head) :])
    before, part, after = text[:at], text[at : at + len(name)], text[at + len(name) :]
    # The whole name first: the size or layout after it goes before the name is shortened.
    for suffix in (after, after[:1] if after.plain.startswith("/") else Text("")):
        space = room - before.cell_len - suffix.cell_len
        if len(name) <= space:
            return Text.assemble(before, part, suffix)
    space = max(space, 2)
    head = (space - 1) - (space - 1) // 2
    tail = space - 1 - head
    short = Text.assemble(part[:head], ("…", "dim"), part[len(name) - tail :] if tail else "")
    return Text.assemble(before, short, suffix)


def can_mark(data: NodeData | None) -> bool:
    """Whether a node is a checkpoint that averaging can take (a checkpoint folder or a tensor file)."""
    if data is None:
        return False
    if data.kind == "checkpoint":
        return True
    return data.kind == "file" and data.entry is not None and data.entry.is_tensor_file


class CheckpointTree(Tree[NodeData]):
    """A tree that lists folders on expansion, in a worker, with a placeholder meanwhile.

    Marks and the cursor are kept by path: a reload updates the nodes in place, so the cursor,
    the expanded folders and the marks stay where they were.
    """

    BINDINGS = [
        Binding("right,l", "expand_node", "Expand", show=False),
        Binding("left,h", "collapse_node", "Collapse", show=False),
        Binding("backspace", "parent", "Up", show=False),
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
        # In the footer until two are marked (then D, a and d say what marks are for).
        Binding("space", "mark('footer')", "Mark"),
        Binding("space", "mark", "Mark", show=False),
    ]

    marked: reactive[tuple[str, ...]] = reactive((), always_update=True, init=False)
    """Marked checkpoints (paths), in the order they were marked."""

    class Loaded(Message):
        """A worker finished listing a node's children."""

        def __init__(
            self,
            node: TreeNode[NodeData],
            entries: list[Entry] | None,
            records: list[TensorRecord] | None,
            error: str | None,
        ) -> None:
            super().__init__()
            self.node = node
            self.entries = entries
            self.records = records
            self.error = error

    def __init__(
        self,
        root_path: str,
        root_layout: str | None = None,
        listing: Listing = DISK,
        **kwargs: Any,
    ) -> None:
        label = Text(os.path.basename(root_path.rstrip(os.sep)) or root_path, style="bold")
        if root_layout:
            label.append(f"  {root_layout}", style="cyan")
        kind = "checkpoint" if root_layout else "dir"
        super().__init__(label, NodeData(kind, root_path), **kwargs)
        self.listing = listing
        """Where folders are listed from (the disk, or a saved scan)."""
        self.show_root = True
        self.guide_depth = 2
        self._reveal: str | None = None
        """A path the cursor goes to once the folders on the way are loaded."""

    def on_mount(self) -> None:
        """Load the root's children."""
        self.root.expand()

    def watch_marked(self) -> None:
        """Redraw the marks."""
        self._invalidate()

    def render_label(self, node: TreeNode[NodeData], base_style: Style, style: Style) -> Text:
        """The label, with a mark in front of marked checkpoints."""
        text = super().render_label(node, base_style, style)
        data = node.data
        if data is not None and data.kind != "key" and data.path in self.marked:
            text = Text.assemble(("● ", "bold"), text)
        # Long names are shortened in the middle to the width there is (no sideways scrolling).
        depth = 0
        parent = node.parent
        while parent is not None:
            depth += 1
            parent = parent.parent
        room = self.scrollable_content_region.width - self.guide_depth * depth
        if room > 8 and text.cell_len > room:
            text = _fit(text, os.path.basename(data.path) if data is not None else "", room)
        return text

    def on_resize(self, event: events.Resize) -> None:
        """Labels are shortened to the width: draw them again."""
        self._invalidate()

    def action_expand_node(self) -> None:
        """Expand the node under the cursor (a plain file has nothing to expand: nothing is read)."""
        node = self.cursor_node
        if node is None or not node.allow_expand:
            return
        if node.is_expanded and node.children:
            self.move_cursor(node.children[0])
        else:
            node.expand()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """The footer's Mark shows until two checkpoints are marked; the key always works."""
        if parameters and parameters[-1] == "footer":
            return len(self.marked) < 2
        return True

    def action_mark(self, _where: str = "") -> None:
        """Mark or unmark the checkpoint under the cursor (for averaging), then move down."""
        node = self.cursor_node
        if node is None or node.data is None:
            return
        if not can_mark(node.data):
            name = os.path.basename(node.data.path)
            self.notify(f"{name}: not a checkpoint; only checkpoints can be marked", timeout=3)
            return
        path = node.data.path
        if path in self.marked:
            self.marked = tuple(p for p in self.marked if p != path)
        else:
            self.marked = (*self.marked, path)
        self.action_cursor_down()

    def marked_paths(self) -> list[str]:
        """Marked checkpoints, in the order they were marked."""
        return list(self.marked)

    def action_collapse_node(self) -> None:
        """Collapse the node under the cursor if it is open, else go to its parent (left open)."""
        node = self.cursor_node
        if node is None:
            return
        if node.is_expanded and node.allow_expand:
            node.collapse()
        else:
            self.action_parent()

    def action_parent(self) -> None:
        """Go to the parent node, leaving it open."""
        node = self.cursor_node
        if node is not None and node.parent is not None:
            self.move_cursor(node.parent)

    def node_of(self, path: str) -> TreeNode[NodeData] | None:
        """The loaded node of a path (folders and files, not keys), or None."""
        node = self.root
        while True:
            data = node.data
            if data is not None and data.path == path and data.kind != "key":
                return node
            node_next = None
            for child in node.children:
                cd = child.data
                if cd is None or cd.kind in ("key", "placeholder"):
                    continue
                if is_within(path, cd.path):
                    node_next = child
                    break
            if node_next is None:
                return None
            node = node_next

    def reveal(self, path: str) -> None:
        """Move the cursor to a path below the root, opening (and loading) folders on the way."""
        node = self.root
        assert node.data is not None
        if not is_within(path, node.data.path):
            return
        self._reveal = None
        while True:
            data = node.data
            assert data is not None
            if data.path == path:
                self._goto(node)
                return
            if not data.loaded or not node.is_expanded:
                self._reveal = path
                node.expand()
                if not data.loaded or any(
                    c.data is not None and c.data.kind == "placeholder" for c in node.children
                ):
                    return  # `_loaded` comes back here
            child = next(
                (
                    c
                    for c in node.children
                    if c.data is not None
                    and c.data.kind not in ("key", "placeholder")
                    and is_within(path, c.data.path)
                ),
                None,
            )
            if child is None:
                self._reveal = None
                return
            node = child

    def _goto(self, node: TreeNode[NodeData]) -> None:
        self._tree_lines  # noqa: B018 (builds the lines, so the node knows its line)
        self.move_cursor(node)

    def reload(self, path: str) -> None:
        """Read a loaded folder again; nodes that still exist keep their place, marks and state."""
        node = self.node_of(path)
        if node is None or node.data is None or not node.data.loaded:
            return
        if node.data.kind in ("dir", "checkpoint"):
            self._load(node)

    @on(Tree.NodeExpanded)
    def _expanded(self, event: Tree.NodeExpanded[NodeData]) -> None:
        data = event.node.data
        if data is None or data.loaded:
            return
        if data.kind == "key":
            self._add_keys(event.node, data.children)
            data.loaded = True
            return
        data.loaded = True
        event.node.add_leaf(Text(LOADING, style="dim italic"), NodeData("placeholder", data.path))
        self._load(event.node)

    @work(thread=True, exit_on_error=False, group="tree")
    def _load(self, node: TreeNode[NodeData]) -> None:
        data = node.data
        assert data is not None
        try:
            if data.kind in ("dir", "checkpoint"):
                self.post_message(self.Loaded(node, self.listing.list_dir(data.path), None, None))
            else:
                index = self.listing.read_file(data.path)
                self.post_message(self.Loaded(node, None, index.tensors, index.error))
        except OSError as exc:
            self.post_message(self.Loaded(node, None, None, exc.strerror or str(exc)))

    @on(Loaded)
    def _loaded(self, message: Loaded) -> None:
        node = message.node
        real = [c for c in node.children if c.data is not None and c.data.kind != "placeholder"]
        if message.entries is not None and real:
            self._sync(node, message.entries)
        else:
            node.remove_children()
            if message.entries is not None:
                self._add_entries(node, message.entries)
        if message.error:
            node.add_leaf(Text(message.error, style="red"), NodeData("placeholder", ""))
        if message.records is not None:
            tree = key_tree(message.records)
            assert node.data is not None
            node.data.children = tree
            self._add_keys(node, tree)
        if self._reveal is not None and (message.entries is None or real):
            self.reveal(self._reveal)  # new folders call it when their last chunk is in

    def _new_child(
        self, node: TreeNode[NodeData], entry: Entry, **where: Any
    ) -> TreeNode[NodeData]:
        kind = entry.kind if entry.kind != "other" else "file"
        data = NodeData(kind, entry.path, entry)
        if kind in ("dir", "checkpoint") or entry.is_tensor_file:
            return node.add(entry_label(entry), data, **where)
        return node.add_leaf(entry_label(entry), data, **where)

    def _sync(self, node: TreeNode[NodeData], entries: list[Entry]) -> None:
        """Bring loaded children up to date in place: remove the gone, add the new, relabel."""
        wanted = {e.path for e in entries}
        existing: dict[str, TreeNode[NodeData]] = {}
        for child in list(node.children):
            data = child.data
            if data is None or data.kind == "placeholder" or data.path not in wanted:
                child.remove()
            else:
                existing[data.path] = child
        previous: TreeNode[NodeData] | None = None
        for entry in entries:
            found = existing.get(entry.path)
            if found is None:
                if previous is not None:
                    found = self._new_child(node, entry, after=previous)
                elif node.children:
                    found = self._new_child(node, entry, before=0)
                else:
                    found = self._new_child(node, entry)
            elif found.data is not None and found.data.entry != entry:
                found.data.entry = entry
                found.set_label(entry_label(entry))
            previous = found

    def _add_entries(self, node: TreeNode[NodeData], entries: list[Entry]) -> None:
        """Add children a chunk at a time, so a folder of 10,000 entries never stalls the keys."""
        chunk, rest = entries[:CHUNK], entries[CHUNK:]
        for entry in chunk:
            self._new_child(node, entry)
        if rest:
            self.set_timer(0.001, lambda: self._add_entries(node, rest))
        elif self._reveal is not None:
            self.reveal(self._reveal)

    def _add_keys(self, node: TreeNode[NodeData], tree: dict[str, Any]) -> None:
        assert node.data is not None
        items = sorted(tree.items(), key=lambda kv: -subtree_bytes(kv[1]))
        for name, child in items[:500]:
            size = subtree_bytes(child)
            path = node.data.key_path + (name,)
            if isinstance(child, TensorRecord):
                label = Text.assemble(
                    name,
                    (f"  {child.dtype}{list(child.shape)}", "dim"),
                    (f"  {human_bytes(size)}", "dim"),
                )
                node.add_leaf(label, NodeData("key", node.data.path, key_path=path, nbytes=size))
            else:
                label = Text.assemble((name, "bold"), (f"  {human_bytes(size)}", "dim"))
                node.add(
                    label,
                    NodeData("key", node.data.path, key_path=path, children=child, nbytes=size),
                )
        if len(items) > 500:
            node.add_leaf(
                Text(f"... {len(items) - 500} more", style="dim"), NodeData("placeholder", "")
            )
