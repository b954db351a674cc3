"""Giving the C heap's free memory back to the OS before a large read.

glibc keeps memory freed by the tensors of 1-32 MB (layer weights and their results) in its
heaps for reuse; tensors above its mmap threshold are mapped afresh. So when the largest
tensors come (embeddings, ``lm_head``: hundreds of MB of inputs), the hundreds of MB that
the layers left in the heaps still count in the process's resident memory, on top of them:
140 MB of a 1.07 GB peak on ``med`` in one trace (``benchmarks/memtrace.py``).
``malloc_trim(0)`` releases those free pages (a few milliseconds); elsewhere this is a no-op.
The loader calls it before reads of at least ``EnginePolicy.trim_heap_bytes``
(:mod:`meldkit.execute.policy`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import cache
from typing import Any

__all__ = ["release_free_memory"]


@cache
def _malloc_trim() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None


def release_free_memory() -> bool:
    """Return the heaps' free pages to the OS; True if glibc's ``malloc_trim`` ran."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
