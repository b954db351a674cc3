"""meldkit.evolve.backends: a generation scored serially or on a local 2-worker Ray cluster.

The fake evaluator scores a candidate (a tuple of numbers) by its sum and reports the process and
the torch thread count it ran with, so the tests see which worker did what. A :class:`Trap`
candidate kills its worker once, every time, or makes the evaluator raise.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from meldkit.errors import MergeRuntimeError, OptionError
from meldkit.evolve.backends import BackendOptions, RayBackend, SerialBackend, open_backend
from meldkit.evolve.backends.ray_pool import count_workers


@dataclass(frozen=True)
class Trap:
    """A candidate that misbehaves: its worker dies (once, or always) or the evaluator raises."""

    values: tuple[float, ...]
    die_once: str | None = None  # marker file: the first evaluation creates it and dies
    die_always: bool = False
    error: str | None = None


class SumEvaluator:
    def __init__(self, build_log: str | None) -> None:
        if build_log:  # one line per build, from whichever process built it
            with open(build_log, "a") as log:
                log.write(f"{os.getpid()}\n")

    def evaluate(self, candidate: Any) -> dict[str, float]:
        values = candidate
        if isinstance(candidate, Trap):
            if candidate.die_once and not Path(candidate.die_once).exists():
                Path(candidate.die_once).touch()
                os._exit(1)
            if candidate.die_always:
                os._exit(1)
            if candidate.error:
                raise ValueError(candidate.error)
            values = candidate.values
        return {
            "fitness": float(sum(values)),
            "pid": float(os.getpid()),
            "threads": float(torch.get_num_threads()),
        }


@dataclass
class SumFactory:
    build_log: str | None = None
    fail: bool = False

    def __call__(self) -> SumEvaluator:
        if self.fail:
            raise RuntimeError("no model at /nowhere")
        return SumEvaluator(self.build_log)


GENERATION = [(1.0, 2.0), (3.0,), (0.5, 0.25, 0.125), (-4.0, 1.0), (10.0,)]
FITNESS = [3.0, 3.0, 0.875, -3.0, 10.0]


def builds(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def test_importing_the_backends_loads_neither_ray_nor_torch():
    code = (
        "import sys, meldkit.evolve.backends; print('ray' in sys.modules, 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]


# --- serial ---------------------------------------------------------------------------------


def test_serial_scores_in_order_and_builds_the_evaluator_once_on_first_use(tmp_path):
    log = tmp_path / "builds"
    backend = open_backend(SumFactory(str(log)), BackendOptions(kind="serial", cpus_per_worker=3))
    assert isinstance(backend, SerialBackend) and backend.workers == 1
    assert builds(log) == []  # nothing built before the first generation
    threads_before = torch.get_num_threads()
    first = backend.map(GENERATION)
    second = backend.map(list(reversed(GENERATION)))
    assert [r["fitness"] for r in first] == FITNESS
    assert [r["fitness"] for r in second] == FITNESS[::-1]
    assert {r["pid"] for r in first + second} == {os.getpid()}
    assert {r["threads"] for r in first} == {3.0}  # cpus_per_worker, as on a Ray worker
    assert torch.get_num_threads() == threads_before  # and the caller's count is restored
    assert builds(log) == [os.getpid()]
    assert backend.map([]) == []
    backend.close()


def test_serial_evaluator_exception_names_the_candidate():
    backend = open_backend(SumFactory(), BackendOptions(kind="serial"))
    with pytest.raises(MergeRuntimeError) as caught:
        backend.map([(1.0,), Trap((2.0,), error="boom")])
    assert caught.value.message == (
        "candidate 1 Trap(values=(2.0,), die_once=None, die_always=False, error='boom') "
        "failed in the evaluator: ValueError: boom"
    )
    assert isinstance(caught.value.__cause__, ValueError)


def test_serial_factory_failure_is_a_meldkit_error():
    backend = open_backend(SumFactory(fail=True), BackendOptions(kind="serial"))
    with pytest.raises(MergeRuntimeError) as caught:
        backend.map([(1.0,)])
    assert (
        caught.value.message == "could not build the evaluator: RuntimeError: no model at /nowhere"
    )


@pytest.mark.parametrize(
    ("options", "workers"),
    [
        (BackendOptions(), 16),  # one per CPU
        (BackendOptions(cpus_per_worker=3), 5),  # 16 // 3
        (BackendOptions(gpus_per_worker=1), 8),  # one per GPU
        (BackendOptions(gpus_per_worker=0.5), 16),  # two on each GPU
        (BackendOptions(gpus_per_worker=0.5, cpus_per_worker=4), 4),  # the CPUs run out first
        (BackendOptions(workers=2, gpus_per_worker=4), 2),
    ],
)
def test_worker_count_fills_the_cluster_by_cpus_and_gpus(options, workers):
    assert count_workers(options, {"CPU": 16.0, "GPU": 8.0, "memory": 1e11}) == workers


def test_a_worker_the_cluster_cannot_hold_is_refused():
    with pytest.raises(OptionError) as caught:
        count_workers(BackendOptions(cpus_per_worker=4), {"CPU": 2.0})
    assert caught.value.message == "one worker needs 4 CPU but the Ray cluster has 2 CPUs"
    with pytest.raises(OptionError) as caught:
        count_workers(BackendOptions(workers=3, gpus_per_worker=1), {"CPU": 16.0, "GPU": 2.0})
    assert (
        caught.value.message == "workers=3 with 1 GPU each needs 3 GPUs but the Ray cluster has 2"
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (BackendOptions(kind="rey"), "unknown backend kind 'rey'. Did you mean 'ray'?"),
        (BackendOptions(workers=0), "workers must be at least 1, got 0"),
        (BackendOptions(cpus_per_worker=0), "cpus_per_worker must be at least 1, got 0"),
        (BackendOptions(gpus_per_worker=-1), "gpus_per_worker cannot be negative, got -1"),
        (BackendOptions(max_retries=-1), "max_retries cannot be negative, got -1"),
    ],
)
def test_impossible_options_are_refused(options, message):
    with pytest.raises(OptionError) as caught:
        open_backend(SumFactory(), options)
    assert caught.value.message == message


def test_without_ray_kind_ray_is_refused_and_auto_runs_serially(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(OptionError) as caught:
        open_backend(SumFactory(), BackendOptions(kind="ray", workers=2))
    assert (caught.value.message, caught.value.hint) == (
        "--ray needs the ray package",
        "pip install 'meldkit[ray]'",
    )
    lines: list[str] = []
    backend = open_backend(SumFactory(), BackendOptions(workers=2), on_info=lines.append)
    assert isinstance(backend, SerialBackend)
    assert lines == [
        "ray is not installed: evaluating candidates serially in this process "
        "(pip install 'meldkit[ray]' to use Ray)"
    ]
    assert [r["fitness"] for r in backend.map(GENERATION)] == FITNESS


def test_auto_stays_serial_when_nothing_asks_for_ray(monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    lines: list[str] = []
    backend = open_backend(SumFactory(), BackendOptions(workers=1), on_info=lines.append)
    assert isinstance(backend, SerialBackend) and lines == []


# --- Ray ------------------------------------------------------------------------------------


# These run before the module's cluster starts: Ray must not be running in this process yet.


def test_ray_started_by_the_backend_has_its_cpus_and_is_shut_down_by_close(monkeypatch):
    ray = pytest.importorskip("ray")
    from ray import cloudpickle

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not ray.is_initialized()
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        backend = open_backend(SumFactory(), BackendOptions(workers=2))  # auto: 2 workers -> Ray
        assert isinstance(backend, RayBackend) and backend.started_ray
        assert ray.cluster_resources()["CPU"] == 2.0  # workers * cpus_per_worker
        assert [r["fitness"] for r in backend.map(GENERATION)] == FITNESS
        backend.close()
        assert not ray.is_initialized()
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        ray.shutdown()


def test_an_unpicklable_factory_is_refused_before_ray_starts():
    ray = pytest.importorskip("ray")

    @dataclass
    class HoldsALock:
        lock: Any

        def __call__(self) -> SumEvaluator:
            return SumEvaluator(None)

    with pytest.raises(OptionError) as caught:
        open_backend(HoldsALock(threading.Lock()), BackendOptions(kind="ray"))
    assert caught.value.message == (
        "the evaluator factory HoldsALock cannot be sent to Ray workers: "
        "TypeError: cannot pickle '_thread.lock' object"
    )
    assert not ray.is_initialized()


def test_ray_address_without_a_cluster_is_refused(monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(OptionError) as caught:
        open_backend(SumFactory(), BackendOptions(address="auto"))
    assert caught.value.message.startswith(
        "cannot reach the Ray cluster at auto: Could not find any running Ray instance."
    )
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray for the whole module (starting Ray takes seconds).

    Four logical CPUs: the shared 2-worker backend holds two, and the one-worker backends of the
    error tests fit beside it (an actor that finds no free CPU waits for one).
    """
    ray = pytest.importorskip("ray")
    from ray import cloudpickle

    # The workers need not import this test module: its factory and Trap travel by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def ray_backend(ray_cluster, tmp_path_factory):
    """Two workers, built once; ``build_log`` lists the pid of every evaluator built."""
    log = tmp_path_factory.mktemp("ray") / "builds"
    lines: list[str] = []
    backend = open_backend(
        SumFactory(str(log)), BackendOptions(kind="ray", workers=2), on_info=lines.append
    )
    backend.build_log = log  # type: ignore[attr-defined]
    assert isinstance(backend, RayBackend) and backend.workers == 2
    assert lines == ["evaluating on 2 Ray workers (1 CPU each) on a local Ray"]
    yield backend
    backend.close()
    assert ray_cluster.is_initialized()  # the backend did not start Ray, so it left it running


def test_ray_gives_the_serial_scores_in_order_on_both_workers(ray_backend):
    serial = SerialBackend(SumFactory()).map(GENERATION)
    first = ray_backend.map(GENERATION)
    second = ray_backend.map(GENERATION)
    assert [r["fitness"] for r in first] == [r["fitness"] for r in serial] == FITNESS
    assert [r["fitness"] for r in second] == FITNESS
    pids = {int(r["pid"]) for r in first + second}
    assert len(pids) == 2 and os.getpid() not in pids
    assert {r["threads"] for r in first} == {1.0}  # torch threads = cpus_per_worker
    # One evaluator per worker, kept between generations.
    assert sorted(builds(ray_backend.build_log)) == sorted(pids)


def test_ray_says_when_workers_must_wait_for_busy_cpus(ray_backend):
    # ray_backend's two workers hold 2 of the cluster's 4 CPUs. This runs before the tests that
    # open more backends: Ray frees a killed worker's CPU a moment after close() returns.
    lines: list[str] = []
    options = BackendOptions(kind="ray", workers=1, cpus_per_worker=3)
    open_backend(SumFactory(), options, on_info=lines.append).close()
    assert lines == [
        "evaluating on 1 Ray workers (3 CPU each) on a local Ray; only 2 of the 3 CPUs they "
        "need are free, so some wait for other Ray tasks to finish"
    ]


def test_ray_reruns_the_candidate_of_a_killed_worker(ray_backend, tmp_path):
    before = {int(r["pid"]) for r in ray_backend.map([(0.0,), (0.0,)])}
    marker = tmp_path / "died"
    results = ray_backend.map([(1.0,), Trap((2.0, 3.0), die_once=str(marker)), (4.0,)])
    assert marker.exists()  # the worker did die on it ...
    assert [r["fitness"] for r in results] == [1.0, 5.0, 4.0]  # ... and nothing was lost
    assert int(results[1]["pid"]) not in before  # re-run on the restarted worker
    # The restarted worker built its own evaluator, once.
    assert builds(ray_backend.build_log).count(int(results[1]["pid"])) == 1
    # The pool still has both workers for the next generation.
    after = {int(r["pid"]) for r in ray_backend.map([(0.0,), (0.0,)])}
    assert len(after) == 2


def test_ray_evaluator_exception_names_the_candidate(ray_backend):
    with pytest.raises(MergeRuntimeError) as caught:
        ray_backend.map([(1.0,), Trap((2.0,), error="boom")])
    assert caught.value.message == (
        "candidate 1 Trap(values=(2.0,), die_once=None, die_always=False, error='boom') "
        "failed in the evaluator: ValueError: boom"
    )
    notes = "".join(caught.value.__notes__)
    assert notes.startswith("traceback on the Ray worker:\nTraceback (most recent call last)")
    assert notes.endswith("ValueError: boom\n")
    # Not retried as a dead worker, and the backend keeps working.
    assert [r["fitness"] for r in ray_backend.map(GENERATION)] == FITNESS


def test_ray_factory_failure_is_reported_once(ray_cluster):
    with open_backend(SumFactory(fail=True), BackendOptions(kind="ray", workers=1)) as backend:
        with pytest.raises(MergeRuntimeError) as caught:
            backend.map([(1.0,)])
    assert caught.value.message == (
        "could not build the evaluator on a Ray worker: RuntimeError: no model at /nowhere"
    )


def test_ray_gives_up_after_max_retries_deaths(ray_cluster):
    options = BackendOptions(kind="ray", workers=1, max_retries=0)
    with open_backend(SumFactory(), options) as backend:
        with pytest.raises(MergeRuntimeError) as caught:
            backend.map([Trap((1.0,), die_always=True)])
    assert caught.value.message.startswith(
        "candidate 0 Trap(values=(1.0,), die_once=None, die_always=True, error=None) was lost: "
        "its Ray worker died or became unreachable on its only try ("
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            BackendOptions(kind="ray", workers=3, cpus_per_worker=2),
            "workers=3 with 2 CPU each needs 6 CPUs but the Ray cluster has 4",
        ),
        (
            BackendOptions(kind="ray", gpus_per_worker=1),
            "one worker needs 1 CPU + 1 GPU but the Ray cluster has 4 CPUs and 0 GPUs",
        ),
    ],
)
def test_ray_refuses_workers_the_cluster_cannot_hold(ray_cluster, options, message):
    with pytest.raises(OptionError) as caught:
        open_backend(SumFactory(), options)
    assert caught.value.message == message
