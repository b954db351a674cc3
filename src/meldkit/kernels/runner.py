"""Running numba CPU kernels: loading them when numba is installed, the inputs as numpy
arrays of their stored bits, and fixed work ranges on a pool of threads.

Kernels (``kernels/*_numba.py``) are ``@njit(nogil=True)`` functions that take a range of
work items and write into arrays the caller passes; :func:`parallel` runs one range per math
thread. Results never depend on how the work is split: kernels accumulate per fixed-size
chunk, and the caller combines chunks in order.

numba compiles a kernel on its first call after an install (``cache=True`` keeps the machine
code in ``__pycache__`` afterwards), which takes 10-30 s: :func:`watch_compiles` lets the
engine say so and count that time.
"""

from __future__ import annotations

import importlib
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import cache
from types import ModuleType
from typing import Any

import numpy as np
import torch

__all__ = [
    "load",
    "key_halves",
    "as_numpy",
    "stored_arrays",
    "cpu_tensors",
    "output_buffer",
    "chunk_count",
    "ranges",
    "run_all",
    "parallel",
    "zeroed_scratch",
    "watch_compiles",
]

# Stored dtypes kernels read directly (bf16 as its uint16 bits); float16 is widened first.
STORED = (torch.bfloat16, torch.float32)
ACCEPTED = (torch.bfloat16, torch.float32, torch.float16)


@cache
def load(name: str) -> ModuleType | None:
    """The kernels module ``meldkit.kernels.<name>``, or None when numba cannot be imported."""
    try:
        module = importlib.import_module(f"meldkit.kernels.{name}")
    except ImportError:
        return None
    _hook_numba()
    return module


# -- compile notices ---------------------------------------------------------------------------

_WATCH_LOCK = threading.Lock()
# (on_start, on_end) pairs of the runs in progress; numba's events are process-wide.
_WATCHERS: list[tuple[Callable[[], None], Callable[[float], None]]] = []
_HOOKED = False
_DEPTH = 0  # nested compiles (a kernel compiles the functions it calls)
_STARTED = 0.0


@contextmanager
def watch_compiles(on_start: Callable[[], None], on_end: Callable[[float], None]) -> Iterator[None]:
    """While the block runs, call ``on_start()`` when numba starts compiling (a cache miss:
    nothing is compiled when the cache in ``__pycache__`` is valid) and ``on_end(seconds)``
    when that compilation, nested ones included, ends. The callbacks run in the compiling
    thread. numba is not imported for this: a merge without kernels never loads it."""
    entry = (on_start, on_end)
    with _WATCH_LOCK:
        _WATCHERS.append(entry)
    if "numba" in sys.modules:
        _hook_numba()
    try:
        yield
    finally:
        with _WATCH_LOCK:
            _WATCHERS.remove(entry)


def _hook_numba() -> None:
    """Subscribe to numba's ``numba:compile`` events, once per process."""
    global _HOOKED
    with _WATCH_LOCK:
        if _HOOKED:
            return
        _HOOKED = True
    from numba.core import event

    class CompileListener(event.Listener):
        """Forwards numba's compile events to the callbacks of :func:`watch_compiles`."""

        def on_start(self, ev: Any) -> None:
            _compile_started()

        def on_end(self, ev: Any) -> None:
            _compile_ended()

    event.register("numba:compile", CompileListener())  # type: ignore[no-untyped-call]


def _compile_started() -> None:
    global _DEPTH, _STARTED
    with _WATCH_LOCK:
        _DEPTH += 1
        if _DEPTH > 1:
            return
        _STARTED = time.perf_counter()
        watchers = list(_WATCHERS)
    for on_start, _ in watchers:
        on_start()


def _compile_ended() -> None:
    global _DEPTH
    with _WATCH_LOCK:
        _DEPTH = max(0, _DEPTH - 1)
        if _DEPTH:
            return
        seconds = time.perf_counter() - _STARTED
        watchers = list(_WATCHERS)
    for _, on_end in watchers:
        on_end(seconds)


def key_halves(key: int) -> tuple[np.uint64, np.uint64]:
    """The low and high 32 bits of a stream key (``MergeContext.stream_key``), as the kernels'
    hash takes them."""
    return np.uint64(key & 0xFFFFFFFF), np.uint64((key >> 32) & 0xFFFFFFFF)


def cpu_tensors(inputs: Sequence[torch.Tensor], device: str) -> bool:
    """Whether ``inputs`` suit the CPU kernels: on the CPU, of one shape, contiguous, and in a
    dtype they read (bf16, fp32, or fp16 which :func:`stored_arrays` widens)."""
    if device != "cpu" or not inputs:
        return False
    shape = inputs[0].shape
    return all(
        x.device.type == "cpu" and x.dtype in ACCEPTED and x.shape == shape and x.is_contiguous()
        for x in inputs
    )


def as_numpy(x: torch.Tensor) -> np.ndarray:
    """A flat numpy view of ``x`` (no copy); bfloat16 as its ``uint16`` bits."""
    flat = x.reshape(-1)
    if flat.dtype == torch.bfloat16:
        return flat.view(torch.int16).numpy().view(np.uint16)
    return flat.numpy()


def stored_arrays(tensors: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """Flat arrays of one dtype for the kernels: all bf16 bits, or else all float32 (fp16 and
    mixed dtypes are widened; the widening is exact)."""
    dtypes = {x.dtype for x in tensors}
    if len(dtypes) > 1 or not dtypes <= set(STORED):
        tensors = [x.float() for x in tensors]
    return [as_numpy(x) for x in tensors]


def output_buffer(numel: int, dtype: torch.dtype) -> torch.Tensor:
    """A flat tensor for a kernel's result: bfloat16 when ``dtype`` is (the kernels round to
    it themselves), float32 otherwise (the caller or the engine casts once from there). Pass
    ``out.dtype == torch.bfloat16`` to the kernel as its bf16 flag."""
    return torch.empty(numel, dtype=torch.bfloat16 if dtype == torch.bfloat16 else torch.float32)


def chunk_count(n: int, chunk: int) -> int:
    """How many fixed chunks of ``chunk`` elements cover ``n``; at least one, so that an empty
    tensor still runs (and initialises) one empty chunk."""
    return max(1, -(-n // chunk))


def ranges(n: int) -> list[tuple[int, int]]:
    """``[0, n)`` split into one contiguous range per math thread (torch's thread count)."""
    parts = max(1, min(n, torch.get_num_threads()))
    step = max(1, -(-n // parts))
    return [(a, min(n, a + step)) for a in range(0, n, step)] or [(0, 0)]


_POOL: ThreadPoolExecutor | None = None


def run_all(calls: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> None:
    """Run kernel calls on threads (the kernels release the GIL) and wait for all of them."""
    global _POOL
    if len(calls) == 1:
        fn, args = calls[0]
        fn(*args)
        return
    if _POOL is None or _POOL._max_workers < len(calls):
        _POOL = ThreadPoolExecutor(len(calls), thread_name_prefix="meldkit-math")
    for job in [_POOL.submit(fn, *args) for fn, args in calls]:
        job.result()


def parallel(fn: Callable[..., Any], n: int, *args: Any, lead: int = 2) -> None:
    """``fn(*args[:lead], a, b, *args[lead:])`` for each range ``[a, b)`` of ``[0, n)``, in
    parallel; results land in arrays the caller passed."""
    run_all([(fn, (*args[:lead], a, b, *args[lead:])) for a, b in ranges(n)])


_SCRATCH: dict[str, np.ndarray] = {}


def zeroed_scratch(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A zeroed int64 array kept between tensors: histograms are megabytes, and fresh ones
    for every tensor cost page faults and zeroing. Only the merging thread calls this."""
    buf = _SCRATCH.get(name)
    if buf is None or buf.shape != shape:
        buf = _SCRATCH[name] = np.zeros(shape, dtype=np.int64)
    else:
        buf.fill(0)
    return buf
