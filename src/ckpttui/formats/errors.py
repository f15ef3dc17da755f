"""The one error type readers raise; its message names the problem and, for bytes, the offset.

The hierarchy of every ckpttui error, and what each becomes for the user: ckpttui.errors.
"""

from __future__ import annotations


class FormatError(Exception):
    """A file is not what its format promises (message: one line, with a byte offset if known)."""
