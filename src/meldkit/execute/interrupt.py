"""Turning SIGINT and SIGTERM into an orderly stop of a merge.

The first signal of a run raises :class:`Interrupted` in the main thread, where the runner
catches it, waits for the pipeline's threads and cleans up (:mod:`meldkit.execute.runner`).
Cleanup and the final rename run :meth:`InterruptGuard.shielded`, so a signal never cuts them
in two.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

__all__ = ["Interrupted", "InterruptGuard", "signal_name"]

_SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}


def signal_name(signum: int) -> str:
    """How a message names ``signum``: ``Ctrl-C (SIGINT)``, ``SIGTERM`` or ``signal N``."""
    return _SIGNAL_NAMES.get(signal.Signals(signum), f"signal {signum}")


class Interrupted(BaseException):
    """Raised in the main thread by the first SIGINT/SIGTERM of a run (see InterruptGuard)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class InterruptGuard:
    """Turns SIGINT and SIGTERM into :class:`Interrupted` in the main thread, once.

    Only the first signal raises: later ones arrive while the run is already cleaning up, and
    raising again would abandon that cleanup half-way (leaving threads writing into a folder
    that is being deleted). Inside :meth:`shielded` a first signal is only recorded, and raised
    when the shielded block ends, so cleanup and the final rename are never cut in two.
    A signal the process was started ignoring (e.g. SIGINT for ``cmd &``) stays ignored.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._raised = False
        self._shield = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    if signal.getsignal(sig) is signal.SIG_IGN:
                        continue
                    self._previous[sig] = signal.signal(sig, self._handler)
                except (ValueError, OSError):  # pragma: no cover - embedded interpreters
                    continue
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            return  # already stopping: let the cleanup finish
        self.signum = signum
        if self._shield == 0:
            self._raised = True
            raise Interrupted(signum)

    @contextmanager
    def shielded(self, raise_after: bool = True) -> Iterator[None]:
        """Defer a first signal until the block ends (then raise it, unless ``raise_after`` is
        False: used for the final rename, after which the merge is complete anyway)."""
        self._shield += 1
        try:
            yield
        finally:
            self._shield -= 1
        if self._shield == 0 and self.signum is not None and not self._raised:
            self._raised = True
            if raise_after:
                raise Interrupted(self.signum)
