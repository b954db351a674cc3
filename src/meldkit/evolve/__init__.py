"""``meldkit evolve``: evolutionary search of a merge recipe's parameters.

The pieces, in the order a search uses them:

- :mod:`~meldkit.evolve.config`: the search file (genome, fitness, budget);
- :mod:`~meldkit.evolve.genome`: genes in the unit cube <-> a normal merge recipe;
- :mod:`~meldkit.evolve.optimizers`: CMA-ES and random search, seeded, replayable;
- :mod:`~meldkit.evolve.evaluate`: merge a candidate (in memory where it fits) and score it;
- :mod:`~meldkit.evolve.fitness`: TinyTasks, perplexity, lm-eval, a Python function;
- :mod:`~meldkit.evolve.backends`: score a generation in this process or on Ray workers;
- :mod:`~meldkit.evolve.storage` and :mod:`~meldkit.evolve.report`: the search folder;
- :mod:`~meldkit.evolve.search`: the loop that ties them together, resumable.

Importing this package does not import torch; heavy packages load when a search runs.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BackendOptions",
    "SearchResult",
    "load_search_config",
    "plan_search",
    "run_evolve",
    "run_search",
]

_LAZY = {
    "BackendOptions": "meldkit.evolve.backends",
    "SearchResult": "meldkit.evolve.search",
    "plan_search": "meldkit.evolve.search",
    "run_search": "meldkit.evolve.search",
    "run_evolve": "meldkit.evolve.search",
    "load_search_config": "meldkit.evolve.config",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'meldkit.evolve' has no attribute {name!r}")
