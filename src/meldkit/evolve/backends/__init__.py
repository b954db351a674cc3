"""Where a generation's candidates are evaluated: serially in this process, or on Ray workers.

The search loop hands :meth:`Backend.map` one generation of candidates and gets their score
dicts back in the same order. It never sees which backend it talks to:

>>> backend = open_backend(factory, BackendOptions(kind="ray", workers=4))  # doctest: +SKIP
>>> scores = backend.map(candidates)  # [{"fitness": 0.61}, ...], one per candidate
>>> backend.close()

``factory`` is a picklable callable (a dataclass with ``__call__``) that builds the
:class:`Evaluator`. Each worker calls it once and keeps the evaluator between candidates, so
loaded models and tensors are reused. Ray does the distribution: one actor per worker, an
``ActorPool`` to hand out the candidates, and Ray's own actor restarts and task retries. A
worker that dies (killed, out of memory, a segfault) is restarted and its candidate re-run, up to
``max_retries`` times. A Python exception raised by the evaluator is not retried: it is the
candidate's fault, not the worker's, and comes back as a :class:`MergeRuntimeError` naming the
candidate, on either backend.

On a cluster (``address``), every node must have meldkit and the evaluator's code installed:
the factory is pickled by reference to its module.
"""

from __future__ import annotations

from meldkit.evolve.backends.choose import open_backend
from meldkit.evolve.backends.options import Backend, BackendOptions, Evaluator, EvaluatorFactory
from meldkit.evolve.backends.ray_pool import RayBackend
from meldkit.evolve.backends.serial import SerialBackend

__all__ = [
    "Backend",
    "BackendOptions",
    "Evaluator",
    "EvaluatorFactory",
    "RayBackend",
    "SerialBackend",
    "open_backend",
]
