"""Remembered scans: each unit's summaries (see `inventory.plan`) in SQLite, keyed by its files.

One row per (scan root, unit): the unit's signature (path, size, mtime_ns and inode of every file
in it and of the sidecars beside a loose file) and its summaries as JSON. A second scan of a
folder stats every file (the walk does anyway), reads from the cache the units whose signature
did not change and reads only the others again. Rows carry no trust: jobs never read the cache,
they read their files themselves. The schema key (`SCHEMA` + the ckpttui version) is checked on
open: an upgrade empties the cache.

Where: ``$CKPTTUI_SCAN_CACHE`` (a folder; tests set it), else ``$XDG_CACHE_HOME/ckpttui/``, else
``~/.cache/ckpttui/``; the file is ``scans.sqlite``. Any SQLite error turns the cache off for the
scan (it is never worth failing a scan for).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ckpttui import __version__

SCHEMA = 3
"""Bump when `CheckpointSummary` or what the layouts put in it changes."""
KEY = f"{SCHEMA}/{__version__}"


def cache_dir() -> Path:
    """The folder the scan cache lives in."""
    explicit = os.environ.get("CKPTTUI_SCAN_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ckpttui"


def signature(stats: Iterable[tuple[str, int, int, int]]) -> str:
    """Digest of (path, size, mtime_ns, inode) lines: any change to a file changes it."""
    h = hashlib.blake2b(digest_size=16)
    for path, size, mtime, ino in stats:
        h.update(f"{path}\0{size}\0{mtime}\0{ino}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


class ScanCache:
    """The unit rows of one scan root; `get`/`put` as the scan goes, `close` commits."""

    def __init__(self, root: str, path: Path | None = None) -> None:
        self.root = os.path.abspath(root)
        self.path = path or cache_dir() / "scans.sqlite"
        self.db: sqlite3.Connection | None = None
        self.known: dict[str, str] = {}
        """unit path -> signature, as stored for this root."""
        self.pending = 0
        try:
            self._open()
        except (sqlite3.Error, OSError):
            self.db = None

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=5.0)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is None or row[0] != KEY:
            db.execute("DROP TABLE IF EXISTS units")
            db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (KEY,))
        db.execute(
            "CREATE TABLE IF NOT EXISTS units (root TEXT, unit TEXT, sig TEXT, payload TEXT, "
            "PRIMARY KEY (root, unit)) WITHOUT ROWID"
        )
        db.commit()
        self.known = dict(
            db.execute("SELECT unit, sig FROM units WHERE root = ?", (self.root,)).fetchall()
        )
        self.db = db

    @property
    def enabled(self) -> bool:
        """False once SQLite failed (the scan goes on without a cache)."""
        return self.db is not None

    def get(self, unit: str, sig: str) -> dict[str, Any] | None:
        """The stored payload of a unit whose files have this signature, or None."""
        if self.db is None or self.known.get(unit) != sig:
            return None
        try:
            row = self.db.execute(
                "SELECT payload FROM units WHERE root = ? AND unit = ?", (self.root, unit)
            ).fetchone()
            return json.loads(row[0]) if row else None
        except (sqlite3.Error, ValueError):
            self._off()
            return None

    def get_many(self, units: dict[str, str]) -> dict[str, dict[str, Any]]:
        """`get` for many units at once (unit path -> signature): one query per few hundred."""
        if self.db is None:
            return {}
        wanted = [u for u, sig in units.items() if self.known.get(u) == sig]
        out: dict[str, dict[str, Any]] = {}
        try:
            for i in range(0, len(wanted), 500):
                chunk = wanted[i : i + 500]
                marks = ",".join("?" * len(chunk))
                rows = self.db.execute(
                    f"SELECT unit, payload FROM units WHERE root = ? AND unit IN ({marks})",
                    (self.root, *chunk),
                )
                for unit, payload in rows:
                    out[unit] = json.loads(payload)
        except (sqlite3.Error, ValueError):
            self._off()
            return {}
        return out

    def put(self, unit: str, sig: str, payload: dict[str, Any]) -> None:
        """Remember a unit's payload (committed in batches)."""
        if self.db is None:
            return
        try:
            self.db.execute(
                "INSERT OR REPLACE INTO units VALUES (?, ?, ?, ?)",
                (self.root, unit, sig, json.dumps(payload, separators=(",", ":"))),
            )
            self.pending += 1
            if self.pending >= 500:
                self.db.commit()
                self.pending = 0
        except (sqlite3.Error, TypeError, ValueError):
            self._off()

    def close(self, units: Iterable[str] | None = None) -> None:
        """Commit; with `units` (every unit of a complete scan) forget the rows of units gone."""
        if self.db is None:
            return
        try:
            if units is not None:
                gone = set(self.known) - set(units)
                self.db.executemany(
                    "DELETE FROM units WHERE root = ? AND unit = ?",
                    [(self.root, u) for u in gone],
                )
            self.db.commit()
            self.db.close()
        except sqlite3.Error:
            pass
        self.db = None

    def _off(self) -> None:
        try:
            if self.db is not None:
                self.db.close()
        except sqlite3.Error:
            pass
        self.db = None
