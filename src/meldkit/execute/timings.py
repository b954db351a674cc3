"""Where a merge's time went: counters the pipeline fills in, and the ``-v`` summary.

The pipeline's stages overlap (reads run ahead on their own threads, writes behind), so the
summary gives each stage's busy time and, separately, how long the computing thread *waited*
for a read or a write: that waiting is what a faster disk would save. Everything is measured
on every run (a few clock reads per piece); only the report depends on ``verbose``.
"""

from __future__ import annotations

import heapq
import threading
import time
from dataclasses import dataclass, field

__all__ = ["RunStats", "format_seconds", "format_bytes", "summary_lines"]

_SLOWEST = 3


@dataclass
class RunStats:
    """Counters of one run; the ``add_*`` methods are thread-safe."""

    started: float = field(default_factory=time.perf_counter)
    planning: float | None = None  # seconds, when whoever planned measured it
    method: str = ""
    read_threads: int = 1
    write_threads: int = 1
    tensors: int = 0  # tensors computed by this run
    shards: int = 0
    shards_reused: int = 0  # finished shards a --resume run kept from an earlier run
    read_seconds: float = 0.0
    read_bytes: int = 0
    compute_seconds: float = 0.0
    compile_seconds: float = 0.0
    write_seconds: float = 0.0
    written_bytes: int = 0
    wait_read: float = 0.0
    wait_write: float = 0.0
    pipeline_seconds: float = 0.0
    publish_seconds: float = 0.0
    elapsed: float = 0.0  # set by finish()
    per_tensor: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add_read(self, seconds: float, nbytes: int) -> None:
        with self._lock:
            self.read_seconds += seconds
            self.read_bytes += nbytes

    def add_write(self, seconds: float, nbytes: int) -> None:
        with self._lock:
            self.write_seconds += seconds
            self.written_bytes += nbytes

    def add_compute(self, name: str, seconds: float) -> None:
        """A piece of tensor ``name`` took ``seconds`` to compute (pieces of one tensor add up)."""
        self.compute_seconds += seconds
        self.per_tensor[name] = self.per_tensor.get(name, 0.0) + seconds

    def add_compile(self, seconds: float) -> None:
        with self._lock:
            self.compile_seconds += seconds

    def finish(self) -> None:
        """Stop the clock: the merge is published."""
        self.elapsed = time.perf_counter() - self.started

    def slowest(self, n: int = _SLOWEST) -> list[tuple[str, float]]:
        """The ``n`` tensors that took longest to compute, slowest first."""
        return heapq.nlargest(n, self.per_tensor.items(), key=lambda item: item[1])


def format_seconds(seconds: float) -> str:
    """``0.42 s``, ``12.4 s``, ``3 min 05 s``, ``2 h 07 min``: as precise as is useful."""
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(round(seconds))
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def format_bytes(n: float) -> str:
    """Decimal units with three significant digits at most: ``512 bytes``, ``3.2 GB``,
    ``258 MB``. (A progress line needs no more; sizes in plans keep two decimals.)"""
    if n < 1000:
        return f"{int(n)} bytes"
    for unit in ("KB", "MB", "GB", "TB", "PB"):
        n /= 1000
        if round(n, 1) < 1000 or unit == "PB":
            return f"{n:.1f} {unit}" if round(n, 1) < 100 else f"{n:.0f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def _share(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole > 0 else "0%"


def _bottleneck(stats: RunStats) -> str:
    """Which of computing, waiting for reads, waiting for writes took most of the pipeline."""
    whole = stats.pipeline_seconds
    candidates = [
        (stats.wait_read, "waiting for the inputs to be read (a faster disk would help most)"),
        (stats.compute_seconds, "computing"),
        (stats.wait_write, "waiting for the output to be written (a faster disk would help most)"),
    ]
    seconds, what = max(candidates, key=lambda c: c[0])
    return f"where the time went: mostly {what}, {_share(seconds, whole)} of the merge"


def summary_lines(stats: RunStats) -> list[str]:
    """The ``-v`` report of a finished merge: one line per phase, the three slowest tensors,
    and the phase that limited the merge."""
    head = (
        f"timings: {format_seconds(stats.elapsed)} in all: merging "
        f"{format_seconds(stats.pipeline_seconds)}, publishing "
        f"{format_seconds(stats.publish_seconds)}"
    )
    if stats.planning is not None:
        head += f" (planning took {format_seconds(stats.planning)} before)"
    compute = f"timings: computing ({stats.method}) {format_seconds(stats.compute_seconds)}"
    if stats.compile_seconds:
        compute += f", of which compiling CPU kernels {format_seconds(stats.compile_seconds)}"
    lines = [
        head,
        f"timings: reading {format_bytes(stats.read_bytes)} {format_seconds(stats.read_seconds)}"
        f" on {_threads(stats.read_threads)}",
        compute,
        f"timings: writing {format_bytes(stats.written_bytes)} "
        f"{format_seconds(stats.write_seconds)} on {_threads(stats.write_threads)}",
        f"timings: the computation waited {format_seconds(stats.wait_read)} for reads and "
        f"{format_seconds(stats.wait_write)} for writes",
    ]
    slowest = stats.slowest()
    if slowest:
        shown = ", ".join(f"{name} {format_seconds(s)}" for name, s in slowest)
        lines.append(f"timings: slowest tensors: {shown}")
    if stats.tensors:
        lines.append(f"timings: {_bottleneck(stats)}")
    return lines


def _threads(n: int) -> str:
    return "1 thread" if n == 1 else f"{n} threads"
