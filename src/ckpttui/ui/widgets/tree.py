"""The lazy checkpoint tree: folders, checkpoints, files, and the key tree inside tensor files."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from rich.text import Text
from textual import on, work
from textual.binding import Binding
from textual.message import Message
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from ckpttui.browse import Entry, list_dir
from ckpttui.records import TensorRecord
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


class CheckpointTree(Tree[NodeData]):
    """A tree that lists folders on expansion, in a worker, with a placeholder meanwhile."""

    BINDINGS = [
        Binding("right", "expand_node", "Expand", show=False),
        Binding("left", "collapse_node", "Collapse", show=False),
        Binding("space", "mark", "Mark"),
    ]

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

    def __init__(self, root_path: str, root_layout: str | None = None, **kwargs: Any) -> None:
        label = Text(os.path.basename(root_path.rstrip(os.sep)) or root_path, style="bold")
        if root_layout:
            label.append(f"  {root_layout}", style="cyan")
        kind = "checkpoint" if root_layout else "dir"
        super().__init__(label, NodeData(kind, root_path), **kwargs)
        self.show_root = True
        self.guide_depth = 2
        self.marked: dict[str, TreeNode[NodeData]] = {}

    def on_mount(self) -> None:
        """Load the root's children."""
        self.root.expand()

    def action_expand_node(self) -> None:
        """Expand the node under the cursor."""
        if self.cursor_node is not None:
            self.cursor_node.expand()

    def action_mark(self) -> None:
        """Mark or unmark the checkpoint under the cursor (for averaging)."""
        node = self.cursor_node
        if node is None or node.data is None or node.data.kind not in ("checkpoint", "file"):
            return
        path = node.data.path
        label = node.label.copy() if isinstance(node.label, Text) else Text(str(node.label))
        if path in self.marked:
            del self.marked[path]
            if label.plain.startswith("● "):
                label = label[2:]
        else:
            self.marked[path] = node
            label = Text.assemble(("● ", "bold magenta"), label)
        node.set_label(label)
        self.action_cursor_down()

    def marked_paths(self) -> list[str]:
        """Marked checkpoints, in the order they were marked."""
        return list(self.marked)

    def action_collapse_node(self) -> None:
        """Collapse the node under the cursor, or go to its parent."""
        node = self.cursor_node
        if node is None:
            return
        if node.is_expanded and node.allow_expand:
            node.collapse()
        elif node.parent is not None:
            self.select_node(node.parent)
            self.move_cursor(node.parent)

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
                self.post_message(self.Loaded(node, list_dir(data.path), None, None))
            else:
                from ckpttui.formats import read_file

                index = read_file(data.path)
                self.post_message(self.Loaded(node, None, index.tensors, index.error))
        except OSError as exc:
            self.post_message(self.Loaded(node, None, None, exc.strerror or str(exc)))

    @on(Loaded)
    def _loaded(self, message: Loaded) -> None:
        node = message.node
        node.remove_children()
        if message.error:
            node.add_leaf(Text(message.error, style="red"), NodeData("placeholder", ""))
        if message.entries is not None:
            self._add_entries(node, message.entries)
        if message.records is not None:
            tree = key_tree(message.records)
            assert node.data is not None
            node.data.children = tree
            self._add_keys(node, tree)

    def _add_entries(self, node: TreeNode[NodeData], entries: list[Entry]) -> None:
        """Add children a chunk at a time, so a folder of 10,000 entries never stalls the keys."""
        chunk, rest = entries[:CHUNK], entries[CHUNK:]
        for entry in chunk:
            kind = entry.kind if entry.kind != "other" else "file"
            data = NodeData(kind, entry.path, entry)
            if kind in ("dir", "checkpoint") or entry.is_tensor_file:
                node.add(entry_label(entry), data)
            else:
                node.add_leaf(entry_label(entry), data)
        if rest:
            self.set_timer(0.001, lambda: self._add_entries(node, rest))

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
