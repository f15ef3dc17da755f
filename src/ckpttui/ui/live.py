"""Live: the folder shown is polled (stat only) and shown again when training writes into it.

Polling, not inotify: it works on NFS and needs no new dependency. Every `INTERVAL` seconds one
worker stats the folder, its children and the entries still in progress (a temporary name, an
incomplete checkpoint, a file whose size moved at the last poll); a change posts `Changed`, and
the app reloads the folder in place (cursor and marks stay).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from textual import work
from textual.message import Message
from textual.widget import Widget

INTERVAL = 2.0
"""Seconds between polls."""
DEEP_LIMIT = 2000
"""Entries stat'ed below one in-progress folder at most (a poll stays cheap)."""

Stamps = dict[str, tuple[int, int]]


def stamps(folder: str, deep: Iterable[str]) -> Stamps:
    """(mtime_ns, size) of a folder, its children, and everything below the `deep` children."""
    out: Stamps = {}
    try:
        st = os.stat(folder)
        out[folder] = (st.st_mtime_ns, st.st_size)
        with os.scandir(folder) as it:
            for entry in it:
                try:
                    est = entry.stat(follow_symlinks=True)
                except OSError:
                    continue
                out[entry.path] = (est.st_mtime_ns, est.st_size)
    except OSError:
        return out
    for path in deep:
        stack, seen = [path], 0
        while stack and seen < DEEP_LIMIT:
            try:
                with os.scandir(stack.pop()) as it:
                    for entry in it:
                        seen += 1
                        est = entry.stat(follow_symlinks=False)
                        out[entry.path] = (est.st_mtime_ns, est.st_size)
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
            except OSError:
                continue
    return out


def changed_children(folder: str, old: Stamps, new: Stamps, deep: set[str]) -> set[str]:
    """The children of `folder` that appeared, went, or changed between polls; below a child
    only when both polls looked below it (`deep`)."""
    out: set[str] = set()
    prefix = folder.rstrip(os.sep) + os.sep
    for path in old.keys() | new.keys():
        if path == folder or old.get(path) == new.get(path) or not path.startswith(prefix):
            continue
        child, _, below = path[len(prefix) :].partition(os.sep)
        if not below or prefix + child in deep:
            out.add(prefix + child)
    return out


class LiveWatch(Widget):
    """Polls the folder the app shows; posts `Changed` when something in it moved."""

    DEFAULT_CSS = "LiveWatch { display: none; }"

    class Changed(Message):
        """Children of the folder changed; `writing` are those still moving (in progress)."""

        def __init__(self, folder: str, changed: set[str], writing: set[str]) -> None:
            super().__init__()
            self.folder, self.changed, self.writing = folder, changed, writing

    class Polled(Message):
        """One poll's stamps (internal)."""

        def __init__(self, folder: str, stamps: Stamps, deep: set[str]) -> None:
            super().__init__()
            self.folder, self.stamps, self.deep = folder, stamps, deep

    def __init__(self, target: Callable[[], tuple[str | None, set[str]]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.target = target
        """Returns the folder to watch and the children in progress there."""
        self.paused = False
        """No polls while paused."""
        self.folder: str | None = None
        self.previous: Stamps = {}
        self.previous_deep: set[str] = set()
        self.writing: set[str] = set()
        """Children that moved at the last poll: shown as being written."""
        self._polling = False

    def on_mount(self) -> None:
        """Poll every INTERVAL seconds."""
        self.set_interval(INTERVAL, self.poll)

    def poll(self) -> None:
        """Start one poll (none while paused or while the last one still runs)."""
        if self.paused or self._polling:
            return
        folder, in_progress = self.target()
        if folder is None:
            return
        if folder != self.folder:
            self.folder, self.previous, self.writing = folder, {}, set()
        self._polling = True
        self._stat(folder, in_progress | self.writing)

    @work(thread=True, exclusive=True, exit_on_error=False, group="live")
    def _stat(self, folder: str, deep: set[str]) -> None:
        self.post_message(self.Polled(folder, stamps(folder, deep), deep))

    def on_live_watch_polled(self, message: Polled) -> None:
        """Compare with the last poll: what moved is being written; what stopped is complete."""
        message.stop()
        self._polling = False
        if message.folder != self.folder:
            return
        first = not self.previous
        deep = self.previous_deep & message.deep
        changed = (
            set() if first else changed_children(self.folder, self.previous, message.stamps, deep)
        )
        self.previous, self.previous_deep = message.stamps, message.deep
        finished = self.writing - changed
        self.writing = changed
        if changed or finished:
            self.post_message(self.Changed(self.folder, changed | finished, set(changed)))
