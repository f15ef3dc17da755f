"""The one error type readers raise; its message names the problem and, for bytes, the offset.

The hierarchy of every ckpttui error, and what each becomes for the user: ckpttui.errors.
"""

from __future__ import annotations


class FormatError(Exception):
    """A file is not what its format promises (message: one line, with a byte offset if known).

    ``would_run`` names what a real loader would call, when a pickle read before the problem
    would run code: such a file is reported as code-running, not merely damaged.
    """

    def __init__(self, message: str, would_run: list[str] | None = None) -> None:
        super().__init__(" ".join(str(message).split()))
        self.would_run = list(would_run or [])
