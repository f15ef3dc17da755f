"""Remembered scans: each unit's summaries (see `inventory.plan`) in SQLite, keyed by its files.

One row per (scan root, unit): the unit's signature (path, size, mtime_ns and inode of every file
in it and of the sidecars beside a loose file), its errors and its light summaries (what the
folder view sums: a small table, so a cached folder view reads little), and beside it the unit's
``inspect --json`` text, which a cached ``inspect --json`` writes through without decoding it and
from which the full summaries are read back when they are needed. A second scan of a folder stats
every file (the walk does anyway), reads from the cache the units whose signature did not change
and reads only the others again. Rows carry no trust: jobs never read the cache, they read their
files themselves. The schema key (`SCHEMA` + the ckpttui version) is checked on open: an upgrade
empties the cache.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckpttui import __version__

SCHEMA = 4
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


@dataclass
class Row:
    """What the cache holds for one unit; which fields are filled depends on what was asked."""

    errors: list[tuple[str, str]]
    """(absolute path, one line), as the read gave them."""
    light: list[dict[str, Any]] | None = None
    """Each checkpoint's ``to_dict`` with absolute paths, without its files' sums."""
    entries: tuple[str, str] | None = None
    """The unit's ``inspect --json`` text: its ``checkpoints`` entries and its ``files`` entries
    (each joined with the document's separator); None when it had files counted elsewhere."""
    payload: dict[str, Any] | None = None
    """The full summaries (only stored for units whose `entries` could not be)."""


_COLUMNS = {
    "light": "u.errors, u.light, NULL, NULL, NULL",
    "entries": "u.errors, NULL, t.checkpoints, t.files, t.payload",
}


class ScanCache:
    """The unit rows of one scan root; `get_many`/`put` as the scan goes, `close` commits.

    Two tables: ``units`` (signature, errors and the light summaries the folder view sums: small,
    so a cached folder view reads little) and ``texts`` (the ``inspect --json`` text of each
    unit, written through as it is; the full summaries are decoded from it when needed).
    """

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
            db.execute("DROP TABLE IF EXISTS texts")
            db.execute("DROP TABLE IF EXISTS views")
            db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (KEY,))
        db.execute(
            "CREATE TABLE IF NOT EXISTS units (root TEXT, unit TEXT, sig TEXT, errors TEXT, "
            "light TEXT, PRIMARY KEY (root, unit))"
        )
        db.execute(
            "CREATE TABLE IF NOT EXISTS texts (root TEXT, unit TEXT, checkpoints TEXT, "
            "files TEXT, payload TEXT, PRIMARY KEY (root, unit))"
        )
        db.execute(_VIEWS)
        db.commit()
        self.known = dict(
            db.execute("SELECT unit, sig FROM units WHERE root = ?", (self.root,)).fetchall()
        )
        self.db = db

    @property
    def enabled(self) -> bool:
        """False once SQLite failed (the scan goes on without a cache)."""
        return self.db is not None

    def get_many(self, units: dict[str, str], what: str = "entries") -> dict[str, Row]:
        """The rows of the units (path -> signature) whose files have these signatures, one query
        per few hundred: ``light`` (summaries without files' sums) or ``entries`` (the text)."""
        if self.db is None:
            return {}
        wanted = [u for u, sig in units.items() if self.known.get(u) == sig]
        out: dict[str, Row] = {}
        join = "" if what == "light" else " JOIN texts t USING (root, unit)"
        try:
            for i in range(0, len(wanted), 500):
                chunk = wanted[i : i + 500]
                marks = ",".join("?" * len(chunk))
                cursor = self.db.execute(
                    f"SELECT u.unit, {_COLUMNS[what]} FROM units u{join} "
                    f"WHERE u.root = ? AND u.unit IN ({marks})",
                    (self.root, *chunk),
                )
                rows = cursor.fetchall()
                # the light rows of the batch in one decode: most of a cached folder view's time
                lights = [r[2] for r in rows if r[2] is not None]
                decoded = iter(json.loads(f"[{','.join(lights)}]") if lights else ())
                for unit, errors, light, checkpoints, files, payload in rows:
                    out[unit] = Row(
                        [(p, e) for p, e in json.loads(errors)] if errors != "[]" else [],
                        next(decoded) if light is not None else None,
                        (checkpoints, files) if checkpoints is not None else None,
                        json.loads(payload) if payload is not None else None,
                    )
        except (sqlite3.Error, ValueError):
            self._off()
            return {}
        return out

    def put(
        self,
        unit: str,
        sig: str,
        errors: list[tuple[str, str]],
        light: list[dict[str, Any]] | None,
        entries: tuple[str, str] | None,
        payload: dict[str, Any] | None,
    ) -> None:
        """Remember a unit (committed in batches): `Row`'s fields."""
        if self.db is None:
            return
        try:
            dumps = json.JSONEncoder(separators=(",", ":")).encode
            self.db.execute(
                "INSERT OR REPLACE INTO units VALUES (?, ?, ?, ?, ?)",
                (
                    self.root,
                    unit,
                    sig,
                    dumps([list(e) for e in errors]),
                    None if light is None else dumps(light),
                ),
            )
            checkpoints, files = entries if entries is not None else (None, None)
            self.db.execute(
                "INSERT OR REPLACE INTO texts VALUES (?, ?, ?, ?, ?)",
                (
                    self.root,
                    unit,
                    checkpoints,
                    files,
                    dumps(payload) if payload is not None else None,
                ),
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
                gone = [(self.root, u) for u in set(self.known) - set(units)]
                self.db.executemany("DELETE FROM units WHERE root = ? AND unit = ?", gone)
                self.db.executemany("DELETE FROM texts WHERE root = ? AND unit = ?", gone)
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


_VIEWS = "CREATE TABLE IF NOT EXISTS views (folder TEXT PRIMARY KEY, rows TEXT)"


def _views_db() -> sqlite3.Connection | None:
    """The cache file, if it holds this schema (a folder scan migrates it; this never does)."""
    path = cache_dir() / "scans.sqlite"
    if not path.is_file():
        return None
    db = sqlite3.connect(path, timeout=1.0)
    row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    if row is None or row[0] != KEY:
        db.close()
        return None
    db.execute(_VIEWS)
    return db


def remembered_view(folder: str) -> dict[str, Any] | None:
    """The folder view's rows of `folder` as its last complete scan left them (child path ->
    the numbers), or None. Shown at once on a second visit while the scan checks them."""
    try:
        db = _views_db()
        if db is None:
            return None
        try:
            row = db.execute(
                "SELECT rows FROM views WHERE folder = ?", (os.path.abspath(folder),)
            ).fetchone()
        finally:
            db.close()
        rows = json.loads(row[0]) if row else None
        return rows if isinstance(rows, dict) else None
    except (sqlite3.Error, OSError, ValueError):
        return None


def remember_view(folder: str, rows: dict[str, Any]) -> None:
    """Keep the rows of a complete scan of `folder` (never worth failing a scan for)."""
    try:
        db = _views_db()
        if db is None:
            return
        try:
            db.execute(
                "INSERT OR REPLACE INTO views VALUES (?, ?)",
                (os.path.abspath(folder), json.dumps(rows)),
            )
            db.commit()
        finally:
            db.close()
    except (sqlite3.Error, OSError, ValueError):
        pass
