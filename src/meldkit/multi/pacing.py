"""Pacing the merges of streamed tensors against the read-ahead budget of the stage reading them.

A later stage's reader asks for the next piece's inputs while the current piece is computed.
Reading ahead a file is cheap (mapped pages); reading ahead a streamed tensor is a merge, with
its own inputs and working set, beside the current computation. When that computation is the
chain's largest (an embedding merged by SLERP), the overlap sets the peak: on
``bench-data/small`` the streamed chain held 1.08x the written run's peak RSS (0.95x with
this pacing; 0.93x on ``med``: ``benchmarks/multi.py``).

So a :class:`Pacer` counts the streamed tensors handed to the reader and not yet released
(tracked by weak references) against the stage's read-ahead bytes, as the engine counts the
inputs it reads ahead: the next tensor is merged only when those of *other* output tensors are
below the budget. An output tensor's inputs count until the last of them is released, which
the engine does once the method has returned. Small tensors still overlap
(the budget never binds for them); a large one is merged just in time, and its successor waits
until it is released. Only memory depends on this timing, never a byte of the output.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable

import torch

__all__ = ["Pacer"]

#: The longest a merge waits for the tensors before it to be released. They are released when
#: the method returns; if the later stage fails instead, its traceback holds them while the
#: engine waits for this read to finish, so the wait must end on its own (memory then overlaps,
#: as it would without pacing).
MAX_WAIT_SECONDS = 10.0


class Pacer:
    """Holds back the merge of a streamed tensor while ``budget`` bytes or more of streamed
    tensors for other output tensors are still alive, at most ``max_wait`` seconds (None:
    :data:`MAX_WAIT_SECONDS`); thread-safe."""

    def __init__(self, budget: int, max_wait: float | None = None) -> None:
        self._budget = budget
        self._max_wait = MAX_WAIT_SECONDS if max_wait is None else max_wait
        self._changed = threading.Condition(threading.RLock())
        # Output tensor -> [bytes of its streamed inputs handed out, how many are alive]. The
        # method holds an output's inputs together, so they count in full until the last one
        # is released: the engine drops the last input only once the method has returned.
        self._owners: dict[str, list[int]] = {}
        self._refs: dict[int, weakref.ref[torch.Tensor]] = {}
        self._next_key = 0

    def alive_bytes(self, excluding: str | None = None) -> int:
        """Bytes handed out for the output tensors with an input still alive, except
        ``excluding``."""
        with self._changed:
            return sum(n for owner, (n, _) in self._owners.items() if owner != excluding)

    def produce(self, owner: str, merge: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``merge()``, an input of output tensor ``owner``, once the budget allows it."""
        deadline = time.monotonic() + self._max_wait
        with self._changed:
            # Never for nothing: with a zero budget, one output tensor's inputs at a time.
            while (alive := self.alive_bytes(owner)) and alive >= self._budget:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
        tensor = merge()
        self._track(owner, tensor)
        return tensor

    def _track(self, owner: str, tensor: torch.Tensor) -> None:
        with self._changed:
            key, self._next_key = self._next_key, self._next_key + 1
            counts = self._owners.setdefault(owner, [0, 0])
            counts[0] += tensor.numel() * tensor.element_size()
            counts[1] += 1
            self._refs[key] = weakref.ref(tensor, lambda _: self._release(owner, key))

    def _release(self, owner: str, key: int) -> None:
        # Runs in whichever thread drops the last reference (usually the computing one).
        with self._changed:
            del self._refs[key]
            counts = self._owners[owner]
            counts[1] -= 1
            if not counts[1]:
                del self._owners[owner]
                self._changed.notify_all()
