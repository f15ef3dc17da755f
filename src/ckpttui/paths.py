"""Path tests shared by the scan, the saved scan, the app and the jobs (plain strings, no I/O)."""

from __future__ import annotations

import os


def is_within(path: str, folder: str) -> bool:
    """True when `path` is `folder` or lies below it (by name; neither is resolved)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)
