"""The one error type readers raise; its message names the problem and, for bytes, the offset."""

from __future__ import annotations


class FormatError(Exception):
    """A file is not what its format promises (message: one line, with a byte offset if known)."""
