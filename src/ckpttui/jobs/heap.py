"""Keep a job's resident memory near its working set on glibc.

Jobs allocate one output-sized tensor after another (accumulators, casts). glibc serves those
from its heap and keeps the freed space for reuse, so the heap fragments and resident memory
climbs with every tensor. Below a threshold glibc uses mmap for large blocks and returns them to
the system on free; lowering the threshold to 1 MiB keeps peak memory flat, whatever the number
of tensors or inputs. Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3
THRESHOLD = 1 << 20
_done = False


def return_large_blocks() -> None:
    """Ask glibc to mmap (and so give back on free) every block of 1 MiB or more."""
    global _done
    if _done:
        return
    _done = True
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune
