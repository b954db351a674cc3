"""The backend without Ray: one evaluator in this process, candidates one after another."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from meldkit.evolve.backends.failures import candidate_failed, error_text, factory_failed
from meldkit.evolve.backends.options import Evaluator, EvaluatorFactory


class _ThreadLimit:
    """Runs torch with ``threads`` threads inside the block and restores the count after."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.saved = 0

    def __enter__(self) -> None:
        import torch

        self.saved = torch.get_num_threads()
        torch.set_num_threads(self.threads)

    def __exit__(self, *_exc: object) -> None:
        import torch

        torch.set_num_threads(self.saved)


class SerialBackend:
    """Evaluates candidates in order in this process, with one lazily built evaluator.

    The evaluator runs with ``threads`` torch threads, as a Ray worker with that many CPUs does,
    so a serial run scores exactly what a Ray run scores.
    """

    workers = 1

    def __init__(self, factory: EvaluatorFactory, threads: int = 1) -> None:
        self.factory = factory
        self.threads = threads
        self.evaluator: Evaluator | None = None

    def map(self, candidates: Sequence[Any]) -> list[dict[str, float]]:
        """Score ``candidates`` in order; the first call builds the evaluator."""
        if not candidates:
            return []
        with _ThreadLimit(self.threads):
            if self.evaluator is None:
                try:
                    self.evaluator = self.factory()
                except Exception as exc:
                    raise factory_failed(error_text(exc)) from exc
            results = []
            for index, candidate in enumerate(candidates):
                try:
                    results.append(self.evaluator.evaluate(candidate))
                except Exception as exc:
                    raise candidate_failed(index, candidate, error_text(exc)) from exc
            return results

    def close(self) -> None:
        """Drop the evaluator (and the models it holds)."""
        self.evaluator = None

    def __enter__(self) -> SerialBackend:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
