"""The Ray backend: one actor per worker, an ActorPool per generation, Ray's own retries.

Each actor is created with ``max_restarts=-1`` (a dead worker process always comes back) and
``max_task_retries=max_retries`` (Ray re-runs the method call that was in flight when the actor
died, on the restarted actor). So a killed worker's candidate is scored again rather than lost,
and nothing here schedules or re-submits by hand. ``ActorPool.map`` hands the candidates to
whichever actor is free and yields the results in the candidates' order.
"""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Sequence
from typing import Any

from meldkit.errors import MergeRuntimeError, OptionError
from meldkit.evolve.backends.failures import (
    candidate_failed,
    describe_candidate,
    error_text,
    factory_failed,
)
from meldkit.evolve.backends.options import BackendOptions, Evaluator, EvaluatorFactory


class _Worker:
    """The body of one Ray actor: builds the evaluator on first use and never lets it raise.

    An evaluator's exception comes back as ``("error", text, traceback)`` rather than as a Ray
    task error: Ray then never takes it for a dead worker, and the driver names the candidate.
    """

    def __init__(self, factory: EvaluatorFactory, threads: int) -> None:
        import torch

        # Every worker, and the serial backend, use the same thread count: reductions split the
        # same way, so a candidate scores the same whichever worker gets it.
        torch.set_num_threads(threads)
        self.factory = factory
        self.evaluator: Evaluator | None = None

    def evaluate(self, candidate: Any) -> tuple[str, Any, str]:
        if self.evaluator is None:
            try:
                self.evaluator = self.factory()
            except Exception as exc:
                return "factory", error_text(exc), traceback.format_exc()
        try:
            return "ok", self.evaluator.evaluate(candidate), ""
        except Exception as exc:
            return "error", error_text(exc), traceback.format_exc()


def _tries(n: int) -> str:
    return "on its only try" if n == 1 else f"on each of {n} tries"


def worker_share(opts: BackendOptions) -> str:
    """What one worker asks Ray for, in words: ``"1 CPU"`` or ``"4 CPU + 1 GPU"``."""
    share = f"{opts.cpus_per_worker} CPU"
    if opts.gpus_per_worker:
        share += f" + {opts.gpus_per_worker:g} GPU"
    return share


def count_workers(opts: BackendOptions, cluster: dict[str, float]) -> int:
    """The number of actors: ``opts.workers``, or as many as the cluster's CPUs and GPUs hold.

    ``cluster`` is Ray's resource totals (``{"CPU": 16.0, "GPU": 8.0, ...}``). Asking for more
    than the cluster has is an error: those actors would wait for resources forever.
    """
    asked = [("CPU", float(opts.cpus_per_worker)), ("GPU", float(opts.gpus_per_worker))]
    asked = [(name, per) for name, per in asked if per > 0]
    if opts.workers is None:
        workers = min(int(cluster.get(name, 0.0) // per) for name, per in asked)
        if workers < 1:
            has = " and ".join(f"{cluster.get(name, 0.0):g} {name}s" for name, _per in asked)
            raise OptionError(
                f"one worker needs {worker_share(opts)} but the Ray cluster has {has}",
                hint="lower cpus_per_worker or gpus_per_worker, or connect to a larger cluster",
            )
        return workers
    for name, per in asked:
        if opts.workers * per > cluster.get(name, 0.0):
            raise OptionError(
                f"workers={opts.workers} with {per:g} {name} each needs "
                f"{opts.workers * per:g} {name}s but the Ray cluster has "
                f"{cluster.get(name, 0.0):g}",
                hint="lower workers or the per-worker share, or leave workers unset",
            )
    return opts.workers


class RayBackend:
    """Evaluates candidates on ``workers`` Ray actors (see the module docstring for retries).

    Starts Ray on this machine unless it is already running in this process or an address is
    given; :meth:`close` shuts Ray down only when this backend started it.
    """

    def __init__(self, factory: EvaluatorFactory, options: BackendOptions) -> None:
        import ray
        from ray import cloudpickle

        self.options = options
        try:  # before Ray starts: an unpicklable factory fails here, not in every worker
            cloudpickle.dumps(factory)  # type: ignore[no-untyped-call]
        except Exception as exc:
            raise OptionError(
                f"the evaluator factory {type(factory).__name__} cannot be sent to Ray "
                f"workers: {error_text(exc)}",
                hint="make it a module-level dataclass that holds settings (paths, names), "
                "not loaded models or open files",
            ) from exc
        self.started_ray = not ray.is_initialized()
        if self.started_ray:
            self._start_ray()
        # ray's resource queries are untyped; both map a resource name to an amount.
        total: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
        try:
            self.workers = count_workers(options, total)
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

    def _start_ray(self) -> None:
        import ray

        opts = self.options
        local = opts.address is None and not os.environ.get("RAY_ADDRESS")
        try:
            ray.init(
                address=opts.address,
                ignore_reinit_error=True,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,  # keep Ray's start-up lines off our progress
                num_cpus=(
                    opts.workers * opts.cpus_per_worker
                    if local and opts.workers is not None
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
        return (
            f"evaluating on {self.workers} Ray workers ({worker_share(self.options)} each) on "
            f"{self._where()}"
            f"{self.waiting}"
        )

    def map(self, candidates: Sequence[Any]) -> list[dict[str, float]]:
        """Score ``candidates`` on the actors, in order; a dead worker's candidate is re-run."""
        from ray.util import ActorPool

        items = list(candidates)
        # A fresh pool per generation: one that failed part way leaves no queued candidates
        # behind (a reused pool would submit them later) and no actor dropped from the pool.
        pool = ActorPool(self.actors)
        replies = pool.map(lambda actor, item: actor.evaluate.remote(item), items)
        results: list[dict[str, float]] = []
        for index, candidate in enumerate(items):
            status, value, worker_traceback = self._next_reply(replies, index, candidate)
            if status == "ok":
                results.append(value)
                continue
            if status == "factory":
                error = factory_failed(value, " on a Ray worker")
            else:
                error = candidate_failed(index, candidate, value)
            error.add_note(f"traceback on the Ray worker:\n{worker_traceback}")
            raise error
        return results

    def _next_reply(self, replies: Any, index: int, candidate: Any) -> tuple[str, Any, str]:
        """The next ``(status, value, traceback)``; Ray's own failures as meldkit errors."""
        import ray.exceptions

        try:
            reply: tuple[str, Any, str] = next(replies)
        except ray.exceptions.RayActorError as exc:
            raise MergeRuntimeError(
                f"candidate {index} {describe_candidate(candidate)} was lost: its Ray worker "
                f"died or became unreachable {_tries(self.options.max_retries + 1)} "
                f"({type(exc).__name__})",
                hint="a worker that runs out of memory dies: lower workers or raise the memory "
                "per node, or max_retries; the worker logs are under /tmp/ray/session_latest/logs",
            ) from exc
        except ray.exceptions.RayError as exc:
            raise MergeRuntimeError(
                f"candidate {index} {describe_candidate(candidate)} could not be scored on "
                f"Ray: {error_text(exc)}",
                hint="the worker logs are under /tmp/ray/session_latest/logs",
            ) from exc
        return reply

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
