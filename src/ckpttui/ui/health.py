"""What the verify jobs of this session found: a verdict per checkpoint, statistics per tensor."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ckpttui.paths import is_within


@dataclass
class Verdict:
    """One checkpoint's verdict, from a verify report."""

    path: str
    """The checkpoint (absolute)."""
    healthy: bool
    problems: list[str] = field(default_factory=list)
    """One line each, naming the file and the tensor."""
    files: set[str] = field(default_factory=set)
    """Absolute paths of the files verified."""


@dataclass(frozen=True)
class Health:
    """What a folder row or a checkpoint shows: how many checkpoints were verified, with problems."""

    verified: int
    unhealthy: int
    problems: int

    def label(self, checkpoints: int = 0) -> str:
        """``healthy``, ``3 problems``, ``2/5 healthy``."""
        if self.problems:
            return f"{self.problems} problem{'s' if self.problems != 1 else ''}"
        if checkpoints > self.verified:
            return f"{self.verified}/{checkpoints} healthy"
        return "healthy"


class HealthBook:
    """Verify reports of this session, by absolute path; a newer report replaces an older one."""

    def __init__(self) -> None:
        self.verdicts: dict[str, Verdict] = {}
        self.stats: dict[str, dict[str, dict[str, Any]]] = {}
        """Absolute file -> tensor name -> statistics (``min``, ``max``, ``nan`` ...)."""
        self._index: dict[str, dict[str, Verdict]] = {}
        """Each checkpoint, its files and every folder above it -> the verdicts there (a folder
        of 5,000 rows asks once per row: a lookup, not a scan)."""

    def __bool__(self) -> bool:
        return bool(self.verdicts)

    def add(self, report: dict[str, Any]) -> list[Verdict]:
        """Take a verify job's report; returns its verdicts."""
        root = os.path.abspath(str(report.get("path", "")))
        is_file = os.path.isfile(root)

        def absolute(rel: str) -> str:
            if is_file:
                return root
            return os.path.normpath(os.path.join(root, rel)) if rel else root

        out = []
        for ckpt in report.get("checkpoints", []):
            verdict = Verdict(absolute(str(ckpt.get("path", ""))), bool(ckpt.get("healthy")))
            for p in ckpt.get("problems", []):
                where = f"{p['file']}: tensor {p['tensor']!r}" if p.get("tensor") else p["file"]
                verdict.problems.append(f"{where}: {p['message']}")
            for f in ckpt.get("files", []):
                path = absolute(str(f.get("path", "")))
                verdict.files.add(path)
                self.stats[path] = {
                    t["name"]: t["stats"] for t in f.get("tensors", []) if t.get("stats")
                }
            self.verdicts[verdict.path] = verdict
            out.append(verdict)
        self._reindex()
        return out

    def _reindex(self) -> None:
        self._index = {}
        for verdict in self.verdicts.values():
            keys = set(verdict.files)
            path = verdict.path
            while True:
                keys.add(path)
                parent = os.path.dirname(path)
                if parent == path:
                    break
                path = parent
            for key in keys:
                self._index.setdefault(key, {})[verdict.path] = verdict

    def forget(self, path: str) -> None:
        """Drop what was found under `path` (it was rewritten: the verdict is stale)."""
        for key in [k for k in self.verdicts if is_within(k, path) or is_within(path, k)]:
            for f in self.verdicts.pop(key).files:
                self.stats.pop(f, None)
        self._reindex()

    def _matching(self, path: str) -> list[Verdict]:
        return list(self._index.get(path.rstrip(os.sep) or path, {}).values())

    def of(self, path: str) -> Health | None:
        """The health of a folder, checkpoint or file (None: nothing under it was verified)."""
        found = self._matching(os.path.abspath(path))
        if not found:
            return None
        return Health(
            len(found), sum(not v.healthy for v in found), sum(len(v.problems) for v in found)
        )

    def problems(self, path: str) -> list[str]:
        """The problem lines of the checkpoints under (or holding) `path`."""
        return [line for v in self._matching(os.path.abspath(path)) for line in v.problems]

    def tensor_stats(self, file: str, name: str) -> dict[str, Any] | None:
        """Statistics of one tensor, if its file was verified."""
        return self.stats.get(os.path.abspath(file), {}).get(name)

    def verified_file(self, file: str) -> bool:
        """Whether `file` was read by a verify job of this session."""
        return os.path.abspath(file) in self.stats
