"""What a merge shows while it runs: the progress bar, the compile notice, the final line.

The bar (tqdm, on stderr, only when stderr is a terminal and the run is not quiet) starts
before the first tensor is read, so its clock counts everything a user waits for, including
the one-off compilation of the CPU kernels (:func:`meldkit.kernels.runner.watch_compiles`),
during which it says ``compiling CPU kernels`` and keeps ticking. On success it is replaced
by one line that stays (:func:`final_line`).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from meldkit.execute.timings import RunStats, format_bytes, format_seconds

__all__ = ["COMPILE_NOTICE", "Progress", "final_line"]

#: Said once per process, when numba starts compiling (a cache miss).
COMPILE_NOTICE = "compiling CPU kernels (once per install; about 10-30 s)"

_notice_lock = threading.Lock()
_notice_given = False


def _first_notice() -> bool:
    """True the first time in this process (the kernels are compiled once per install; a
    second merge in the same process compiles at most other signatures)."""
    global _notice_given
    with _notice_lock:
        first, _notice_given = not _notice_given, True
        return first


class Progress:
    """The progress bar of one run; :meth:`note` prints around it without garbling it."""

    def __init__(self, enabled: bool, info: Callable[[str], None], stats: RunStats) -> None:
        self.enabled = enabled
        self._info = info
        self._stats = stats
        self._bar: Any = None
        self._ticking: threading.Event | None = None

    @staticmethod
    def wanted(quiet: bool) -> bool:
        """Whether a bar is shown: not ``quiet``, and stderr is a terminal."""
        stream = sys.stderr
        return not quiet and stream is not None and stream.isatty()

    def start(self, total: int, desc: str = "merging") -> None:
        """Show the bar for ``total`` tensors (does nothing when disabled). A stage before the
        merge (the ``norm_match`` pre-pass) shows a bar of its own, named ``desc``, and closes
        it with :meth:`close` before the merge's bar starts."""
        if not self.enabled:
            return
        from tqdm import tqdm

        self._bar = tqdm(total=total, unit="tensor", desc=desc, leave=False)

    def tensor_done(self) -> None:
        """One more tensor is computed (a ``compiling`` status ends with it)."""
        if self._bar is None:
            return
        if self._ticking is not None:  # the compilations for this tensor are over
            self._stop_ticking()
            self._bar.set_postfix_str("", refresh=False)
        self._bar.update(1)

    def note(self, message: str) -> None:
        """Pass ``message`` to the run's note callback, with the bar cleared meanwhile."""
        self.wrap(self._info)(message)

    def wrap(self, callback: Callable[[str], None]) -> Callable[[str], None]:
        """``callback``, clearing the bar while it runs (it prints where the bar is drawn)."""
        if not self.enabled:
            return callback

        def around_bar(message: str) -> None:
            from tqdm import tqdm

            with tqdm.external_write_mode(file=sys.stderr):
                callback(message)

        return around_bar

    @contextmanager
    def watching_compiles(self) -> Iterator[None]:
        """While the block runs, a numba compilation is announced (once per process), shown
        in the bar and counted in :attr:`RunStats.compile_seconds`."""
        from meldkit.kernels.runner import watch_compiles

        with watch_compiles(self._compile_started, self._compile_ended):
            yield

    def _compile_started(self) -> None:
        if _first_notice():
            self.note(COMPILE_NOTICE)
        if self._bar is None or self._ticking is not None:
            return
        # The status stays until the tensor is done: a kernel compiles the functions it calls
        # one after the other, and the status should not flicker between them.
        self._bar.set_postfix_str("compiling CPU kernels", refresh=True)
        # The computing thread is busy compiling: only another thread can keep the clock
        # moving, so that the bar does not look stuck.
        self._ticking = threading.Event()
        threading.Thread(target=_tick, args=(self._bar, self._ticking), daemon=True).start()

    def _compile_ended(self, seconds: float) -> None:
        self._stats.add_compile(seconds)

    def _stop_ticking(self) -> None:
        if self._ticking is not None:
            self._ticking.set()
            self._ticking = None

    def close(self) -> None:
        """Remove the bar (idempotent)."""
        self._stop_ticking()
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _tick(bar: Any, stop: threading.Event) -> None:
    while not stop.wait(0.5):
        bar.refresh()


def final_line(stats: RunStats) -> str:
    """The line a successful merge leaves where its bar was, e.g. ``merged 291 tensors (3.2 GB
    read, 810 MB written) in 12.4 s, 258 MB/s``: the rate is input bytes read per second of
    the whole run, the figure to compare with the disk's speed."""
    elapsed = max(stats.elapsed, 1e-9)
    line = (
        f"merged {stats.tensors} tensor{'s' if stats.tensors != 1 else ''} "
        f"({format_bytes(stats.read_bytes)} read, {format_bytes(stats.written_bytes)} written) "
        f"in {format_seconds(stats.elapsed)}, {format_bytes(stats.read_bytes / elapsed)}/s"
    )
    if stats.shards_reused:
        line += f"; {stats.shards_reused} of {stats.shards} shards reused from the interrupted run"
    return line
