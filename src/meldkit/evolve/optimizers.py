"""Optimizers over the unit cube: CMA-ES (the ``cma`` package) and random search.

Both follow one ask/tell loop (higher fitness is better) and draw every random number from
their own ``numpy.random.Generator`` seeded by the search's seed, never from numpy's global
state. So the same seed gives the same candidates, and a resumed search can rebuild the
optimizer exactly by asking again and telling it the recorded fitnesses: nothing is pickled.
"""

from __future__ import annotations

from typing import Any, Protocol

from meldkit.errors import OptionError

__all__ = ["Optimizer", "make_optimizer"]


class Optimizer(Protocol):
    """An ask/tell optimizer; ``population`` candidates per generation."""

    population: int

    def ask(self) -> list[list[float]]: ...

    def tell(self, genes: list[list[float]], fitness: list[float]) -> None: ...

    def stop_reason(self) -> str | None: ...


class CmaOptimizer:
    """CMA-ES bounded to [0, 1]^n, seeded, with MergeKit's step size 1/6 by default."""

    def __init__(self, x0: list[float], sigma0: float, seed: int, population: int | None) -> None:
        try:
            import cma
        except ImportError:
            raise OptionError(
                "the cma optimizer needs the cma package",
                hint="pip install 'meldkit[evolve]' (or `optimizer: random`)",
            ) from None
        import numpy as np

        rng = np.random.default_rng(seed)

        def randn(*shape: int) -> Any:
            return rng.standard_normal(shape)

        # CMA-ES needs two dimensions; a one-gene genome gets an inert second gene.
        self._pad = len(x0) == 1
        start = [*x0, 0.5] if self._pad else list(x0)
        options: dict[str, Any] = {
            "seed": float("nan"),  # leave numpy's global state alone: `randn` is ours
            "randn": randn,
            "bounds": [0.0, 1.0],
            "verbose": -9,
            # Accuracies are discrete: equal fitness in a generation is not convergence.
            "tolflatfitness": 10**9,
            "tolfun": 0.0,
            "tolfunhist": 0.0,
            "tolstagnation": 10**9,
        }
        if population is not None:
            options["popsize"] = population
        self._es = cma.CMAEvolutionStrategy(start, sigma0, options)
        self.population = int(self._es.popsize)

    def ask(self) -> list[list[float]]:
        xs = self._es.ask()
        return [[float(v) for v in (x[:-1] if self._pad else x)] for x in xs]

    def tell(self, genes: list[list[float]], fitness: list[float]) -> None:
        import numpy as np

        xs = [np.array([*g, 0.5] if self._pad else g, dtype=float) for g in genes]
        # cma minimises; our fitness is maximised.
        self._es.tell(xs, [-f for f in fitness])

    def stop_reason(self) -> str | None:
        stop = self._es.stop()
        return ", ".join(f"{k}={v}" for k, v in stop.items()) if stop else None


class RandomSearch:
    """Uniform random candidates in [0, 1]^n; the first one is the starting point (a baseline
    for CMA-ES at the same budget)."""

    def __init__(self, x0: list[float], seed: int, population: int | None) -> None:
        import numpy as np

        self._rng = np.random.default_rng(seed)
        self._x0: list[float] | None = list(x0)
        self._n = len(x0)
        self.population = population or 8

    def ask(self) -> list[list[float]]:
        out = [[float(v) for v in row] for row in self._rng.random((self.population, self._n))]
        if self._x0 is not None:
            out[0], self._x0 = self._x0, None
        return out

    def tell(self, genes: list[list[float]], fitness: list[float]) -> None:
        return None

    def stop_reason(self) -> str | None:
        return None


def make_optimizer(
    name: str, x0: list[float], sigma0: float, seed: int, population: int | None
) -> Optimizer:
    """The optimizer called ``name`` (``cma`` or ``random``), starting at ``x0``."""
    if name == "cma":
        return CmaOptimizer(x0, sigma0, seed, population)
    if name == "random":
        return RandomSearch(x0, seed, population)
    raise OptionError(f"unknown optimizer {name!r}", hint="use cma or random")
