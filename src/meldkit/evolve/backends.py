"""Where a generation's candidates are evaluated: serially in this process, or on Ray workers.

The search loop hands :meth:`Backend.map` one generation of candidates and gets their fitness
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
candidate's fault, not the worker's, and comes back as a :class:`MergeRuntimeError`.

On a cluster (``address``), every node must have meldkit and the evaluator's code installed:
the factory is pickled by reference to its module.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from meldkit.errors import MergeRuntimeError, OptionError, did_you_mean

__all__ = [
    "Backend",
    "BackendOptions",
    "Evaluator",
    "EvaluatorFactory",
    "RayBackend",
    "SerialBackend",
    "open_backend",
]

_KINDS = ("serial", "ray", "auto")
_REPR_LIMIT = 120  # a genome can hold hundreds of numbers; the message shows its start


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
    in the environment, or ``workers > 1``), else evaluates serially. ``workers=None`` means one
    worker per GPU when ``gpus_per_worker`` is set (``0.5`` puts two on each), else the cluster's
    CPUs divided by ``cpus_per_worker``. Every evaluator, serial ones included, runs torch with
    ``cpus_per_worker`` threads, so scores do not depend on how many workers share the machine.
    """

    kind: str = "auto"
    address: str | None = None
    workers: int | None = None
    cpus_per_worker: int = 1
    gpus_per_worker: float = 0
    max_retries: int = 3


def open_backend(
    factory: EvaluatorFactory,
    options: BackendOptions,
    on_info: Callable[[str], None] | None = None,
) -> Backend:
    """Return the backend ``options`` ask for; ``on_info`` receives one line saying which.

    Raises :class:`OptionError` for impossible options, for ``kind="ray"`` without the ray
    package, and for more workers than the Ray cluster can hold.
    """
    kind = _check_options(options)
    info = on_info or (lambda _line: None)
    if kind == "serial":
        return SerialBackend(factory, threads=options.cpus_per_worker)
    try:
        import ray  # noqa: F401  (only whether it is importable)
    except ImportError:
        if kind == "ray":
            raise OptionError(
                "--ray needs the ray package", hint="pip install 'meldkit[ray]'"
            ) from None
        info(
            "ray is not installed: evaluating candidates serially in this process "
            "(pip install 'meldkit[ray]' to use Ray)"
        )
        return SerialBackend(factory, threads=options.cpus_per_worker)
    wanted = options.address or os.environ.get("RAY_ADDRESS") or (options.workers or 1) > 1
    if kind == "auto" and not wanted:
        return SerialBackend(factory, threads=options.cpus_per_worker)
    backend = RayBackend(factory, options)
    info(backend.describe())
    return backend


def _check_options(options: BackendOptions) -> Literal["serial", "ray", "auto"]:
    """Reject what no backend can do, before anything starts."""
    if options.kind not in _KINDS:
        raise OptionError(
            f"unknown backend kind {options.kind!r}.{did_you_mean(options.kind, _KINDS)}",
            hint="use one of " + ", ".join(_KINDS),
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
    kind: Literal["serial", "ray", "auto"] = options.kind  # type: ignore[assignment]
    return kind


def _describe(candidate: Any) -> str:
    """A short repr that names a candidate in an error message."""
    text = repr(candidate)
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."


def _candidate_failed(index: int, candidate: Any, error: str) -> MergeRuntimeError:
    """The error for an evaluator that raised ``error`` (``"Type: message"``) on a candidate."""
    return MergeRuntimeError(
        f"candidate {index} {_describe(candidate)} failed in the evaluator: {error}",
        hint="fix the fitness function or narrow the search bounds; a serial run "
        "(workers=1) shows the full traceback",
    )


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


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
    """Evaluates candidates one after another in this process, with one lazily built evaluator."""

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
                self.evaluator = self.factory()
            results = []
            for index, candidate in enumerate(candidates):
                try:
                    results.append(self.evaluator.evaluate(candidate))
                except Exception as exc:
                    raise _candidate_failed(index, candidate, _error_text(exc)) from exc
            return results

    def close(self) -> None:
        """Drop the evaluator (and the models it holds)."""
        self.evaluator = None

    def __enter__(self) -> SerialBackend:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class _Worker:
    """The body of one Ray actor: builds the evaluator on first use and never lets it raise.

    An evaluator exception comes back as ``("error", text)`` rather than as a Ray task error, so
    Ray does not confuse it with a dead worker and the driver can name the candidate.
    """

    def __init__(self, factory: EvaluatorFactory, threads: int) -> None:
        import torch

        # Same thread count on every worker: reductions split the same way, scores agree.
        torch.set_num_threads(threads)
        self.factory = factory
        self.evaluator: Evaluator | None = None

    def evaluate(self, candidate: Any) -> tuple[str, Any]:
        if self.evaluator is None:
            try:
                self.evaluator = self.factory()
            except Exception as exc:
                return "factory", _error_text(exc)
        try:
            return "ok", self.evaluator.evaluate(candidate)
        except Exception as exc:
            return "error", _error_text(exc)


class RayBackend:
    """Evaluates candidates on ``workers`` Ray actors; see the module docstring for retries."""

    def __init__(self, factory: EvaluatorFactory, options: BackendOptions) -> None:
        import ray

        self.options = options
        local = options.address is None and not os.environ.get("RAY_ADDRESS")
        self.started_ray = not ray.is_initialized()
        if self.started_ray:
            try:
                ray.init(
                    address=options.address,
                    ignore_reinit_error=True,
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.WARNING,  # not Ray's start-up chatter on our progress
                    num_cpus=(
                        options.workers * options.cpus_per_worker
                        if local and options.workers is not None
                        else None
                    ),
                )
            except ConnectionError as exc:
                self.started_ray = False
                raise OptionError(
                    f"cannot reach the Ray cluster at {self._where()}: {exc}",
                    hint="give --ray-address the head node's host:port (ray status prints it), "
                    "or leave it out to start Ray on this machine",
                ) from exc
        # ray's resource queries are untyped; both map a resource name to an amount.
        total: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
        try:
            self.workers = self._count_workers(total)
        except OptionError:
            self._shutdown()
            raise
        free: dict[str, float] = ray.available_resources()  # type: ignore[no-untyped-call]
        self.waiting = self._busy_note(free)
        actor = ray.remote(_Worker).options(
            num_cpus=options.cpus_per_worker,
            num_gpus=options.gpus_per_worker,
            max_restarts=-1,  # a dead worker always comes back ...
            max_task_retries=options.max_retries,  # ... and re-runs its candidate this often
        )
        self.actors: list[Any] = [
            actor.remote(factory, options.cpus_per_worker) for _ in range(self.workers)
        ]

    def _count_workers(self, cluster: dict[str, float]) -> int:
        """The number of actors: asked for, or what the cluster's CPUs or GPUs hold."""
        cpus, gpus = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
        opts = self.options
        if opts.workers is None:
            if opts.gpus_per_worker > 0:
                workers = int(gpus // opts.gpus_per_worker)
            else:
                workers = max(1, int(cpus // opts.cpus_per_worker))
            if workers < 1:
                raise OptionError(
                    f"gpus_per_worker={opts.gpus_per_worker:g} but the Ray cluster has no GPUs",
                    hint="set gpus_per_worker=0 for CPU workers, or connect to a cluster with GPUs",
                )
            return workers
        for name, per_worker, total in (
            ("CPU", opts.cpus_per_worker, cpus),
            ("GPU", opts.gpus_per_worker, gpus),
        ):
            if opts.workers * per_worker > total:
                raise OptionError(
                    f"workers={opts.workers} with {per_worker:g} {name} each needs "
                    f"{opts.workers * per_worker:g} {name}s but the Ray cluster has {total:g}",
                    hint="lower workers or the per-worker share, or leave workers unset",
                )
        return opts.workers

    def _busy_note(self, free: dict[str, float]) -> str:
        """Words for a cluster whose free CPUs or GPUs cannot start every worker now."""
        opts = self.options
        for name, per_worker in (("CPU", opts.cpus_per_worker), ("GPU", opts.gpus_per_worker)):
            needed = self.workers * per_worker
            if needed > free.get(name, 0.0):
                return (
                    f"; only {free.get(name, 0.0):g} of the {needed:g} {name}s they need are "
                    "free, so some wait for other Ray tasks to finish"
                )
        return ""

    def _where(self) -> str:
        if self.options.address:
            return self.options.address
        env = os.environ.get("RAY_ADDRESS")
        return f"RAY_ADDRESS={env}" if env else "a local Ray"

    def describe(self) -> str:
        """One line naming the cluster and the workers, for the progress output."""
        opts = self.options
        where = self._where()
        share = f"{opts.cpus_per_worker} CPU"
        if opts.gpus_per_worker:
            share += f" + {opts.gpus_per_worker:g} GPU"
        return f"evaluating on {self.workers} Ray workers ({share} each) on {where}{self.waiting}"

    def map(self, candidates: Sequence[Any]) -> list[dict[str, float]]:
        """Score ``candidates`` on the actors, in order; a dead worker's candidate is re-run."""
        import ray.exceptions
        from ray.util import ActorPool

        items = list(candidates)
        # A fresh pool per generation: a generation that failed part way leaves no queued
        # candidates behind in it (the pool would submit them later) and no actor dropped.
        pool = ActorPool(self.actors)
        replies = pool.map(lambda actor, item: actor.evaluate.remote(item), items)
        results: list[dict[str, float]] = []
        for index, candidate in enumerate(items):
            try:
                status, value = next(replies)
            except ray.exceptions.RayError as exc:
                raise MergeRuntimeError(
                    f"candidate {index} {_describe(candidate)} was lost: its Ray worker died "
                    f"{_times(self.options.max_retries + 1)} ({type(exc).__name__})",
                    hint="a worker that runs out of memory dies: lower workers or raise the "
                    "memory per node; the worker logs are under /tmp/ray/session_latest/logs",
                ) from exc
            if status == "factory":
                raise MergeRuntimeError(
                    f"could not build the evaluator on a Ray worker: {value}",
                    hint="check the fitness settings; a serial run (workers=1) shows the "
                    "full traceback",
                )
            if status == "error":
                raise _candidate_failed(index, candidate, value)
            results.append(value)
        return results

    def close(self) -> None:
        """Kill the actors; shut Ray down only if this backend started it."""
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []
        self._shutdown()

    def _shutdown(self) -> None:
        import ray

        if self.started_ray:
            ray.shutdown()
            self.started_ray = False

    def __enter__(self) -> RayBackend:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
