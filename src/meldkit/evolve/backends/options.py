"""What a backend is given and promises: the evaluator protocol, the options, their checks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from meldkit.errors import OptionError, did_you_mean

Kind = Literal["serial", "ray", "auto"]
KINDS: tuple[Kind, ...] = ("serial", "ray", "auto")


class Evaluator(Protocol):
    """Scores candidates; built once per worker and may keep loaded models between calls."""

    def evaluate(self, candidate: Any) -> dict[str, float]:
        """Return the named scores of one candidate (the search maximizes ``fitness``)."""
        ...


EvaluatorFactory = Callable[[], Evaluator]
"""Builds an :class:`Evaluator` inside the worker; must be picklable for Ray."""


class Backend(Protocol):
    """Evaluates a generation of candidates on ``workers`` evaluators."""

    workers: int

    def map(self, candidates: Sequence[Any]) -> list[dict[str, float]]:
        """Return one score dict per candidate, in the candidates' order."""
        ...

    def close(self) -> None:
        """Release the workers (and Ray, when this backend started it)."""
        ...


@dataclass
class BackendOptions:
    """How to evaluate candidates.

    ``kind="auto"`` uses Ray when it is installed and asked for (an ``address``, ``RAY_ADDRESS``
    in the environment, or ``workers > 1``), else evaluates serially. ``address=None`` starts
    Ray on this machine (unless ``RAY_ADDRESS`` names a cluster, Ray's own rule). ``workers=None``
    means one worker per GPU when ``gpus_per_worker`` is set (``0.5`` puts two on each), else the
    cluster's CPUs divided by ``cpus_per_worker``. Every evaluator, serial ones included, runs
    torch with ``cpus_per_worker`` threads, so scores do not depend on how many workers share the
    machine. A candidate whose worker died is re-run up to ``max_retries`` times.
    """

    kind: str = "auto"
    address: str | None = None
    workers: int | None = None
    cpus_per_worker: int = 1
    gpus_per_worker: float = 0
    max_retries: int = 3


def check_options(options: BackendOptions) -> Kind:
    """Reject what no backend can do, before anything starts; return the kind."""
    if options.kind not in KINDS:
        raise OptionError(
            f"unknown backend kind {options.kind!r}.{did_you_mean(options.kind, KINDS)}",
            hint="use one of " + ", ".join(KINDS),
        )
    if options.workers is not None and options.workers < 1:
        raise OptionError(
            f"workers must be at least 1, got {options.workers}",
            hint="leave it unset for one worker per GPU or per cpus_per_worker CPUs",
        )
    if options.cpus_per_worker < 1:
        raise OptionError(
            f"cpus_per_worker must be at least 1, got {options.cpus_per_worker}",
            hint="give the number of CPU threads each evaluator may use",
        )
    if options.gpus_per_worker < 0:
        raise OptionError(
            f"gpus_per_worker cannot be negative, got {options.gpus_per_worker}",
            hint="use 0 for CPU workers, 1 for one worker per GPU",
        )
    if options.max_retries < 0:
        raise OptionError(
            f"max_retries cannot be negative, got {options.max_retries}",
            hint="use 0 to give up on a candidate the first time its worker dies",
        )
    return next(kind for kind in KINDS if kind == options.kind)
