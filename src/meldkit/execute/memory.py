"""Keeping resident memory equal to live memory.

glibc raises its mmap threshold each time a large block is freed (up to 32 MB), after which
tensor-sized allocations come from the heap and their memory is kept by the process after they
are freed. A merge allocates and frees tensors of every size, so without this the resident set
grows to a multiple of the working set. Pinning the threshold makes every allocation of 1 MB or
more a private mapping that is returned to the system when freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["return_freed_memory"]

_M_MMAP_THRESHOLD = -3  # mallopt parameter numbers from glibc's malloc.h
_done = False


def return_freed_memory(threshold: int = 1 << 20) -> bool:
    """Ask glibc to serve allocations >= ``threshold`` bytes by mmap; False where unsupported."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _done = bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False
    return _done
