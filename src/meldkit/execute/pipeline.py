"""The tensors of a merge in three overlapping stages: read -> compute -> write.

* **read** (:class:`ReadStage`, on its own thread): loads the inputs of the pieces after the
  one being computed, up to ``prefetch + 1`` pieces and the read-ahead bytes ahead;
* **compute** (:class:`ComputeStage`, in the calling thread): runs the method on one piece,
  a whole tensor or a block of rows of a large one;
* **write** (:class:`WriteStage`, on its own thread): puts each finished piece in place in its
  shard while the next is computed; a finished shard is checksummed for the resume journal.

So only a few pieces' data is alive at any time, whatever the model size. The knobs (how far
ahead, how big a piece, how many threads, which order) are the run's
:class:`~meldkit.execute.policy.EnginePolicy`. Each stage adds its busy time and bytes to the
run's :class:`~meldkit.execute.timings.RunStats`, and the computing thread its waits.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from meldkit.execute.interrupt import InterruptGuard
from meldkit.execute.journal import Journal
from meldkit.execute.norm_prepass import run_norm_prepass
from meldkit.execute.policy import EnginePolicy
from meldkit.execute.progress import Progress
from meldkit.execute.tensors import Piece, TensorLoader, compute_order, compute_tensor, split_pieces
from meldkit.execute.timings import RunStats
from meldkit.io.writer import ShardedWriter
from meldkit.methods.registry import MergeContext, MergeFunction, load_merge_function
from meldkit.plan.planner import MergePlan, TensorPlan

__all__ = ["ReadStage", "ComputeStage", "WriteStage", "run_pipeline", "SLOW_WRITE_ENV"]

#: Test hook: seconds to sleep before each tensor write, so tests can interrupt a tiny merge
#: reliably while it is busy. Never set it outside tests.
SLOW_WRITE_ENV = "MELDKIT_TEST_SLOW_WRITE"


def run_pipeline(
    plan: MergePlan,
    tmp: Path,
    device: str,
    seed: int | None,
    policy: EnginePolicy,
    journal: Journal,
    completed: list[str],
    guard: InterruptGuard,
    warn: Callable[[str], None],
    progress: Progress,
    stats: RunStats,
) -> None:
    """Compute every tensor of ``plan`` outside the ``completed`` shards and write it into its
    shard in ``tmp``; ``journal`` records each shard as it completes. ``progress`` shows it,
    ``stats`` counts where the time went."""
    started = time.perf_counter()
    todo = _tensors_to_compute(plan, set(completed), policy)
    read = ReadStage(plan, device, warn, policy, stats)
    write = WriteStage(tmp, journal, policy, stats)
    try:
        # norm_match: every input's task-vector norm, measured before anything is merged.
        factors = run_norm_prepass(plan, read.loader, progress, stats) if plan.norm_match else None
        # The bar starts before anything is loaded, so that its clock counts the import of the
        # method's math and the compilation of its kernels, which a user waits for too.
        progress.start(len(todo))
        with progress.watching_compiles():
            compute = ComputeStage(
                plan, load_merge_function(plan.method), device, seed, read.loader, factors
            )
            write.open(plan, completed)
            pieces = _pieces(plan, todo, policy)
            for piece, inputs in read.ahead(pieces, _read_ahead(plan, policy)):
                result = compute.run(piece, inputs, stats)
                write.put(piece, result)
                del result  # the writer holds it now, and frees it once it is written
                if piece.last:
                    stats.tensors += 1
                    progress.tensor_done()
            write.finish()
    finally:
        # Order matters: no thread may still touch a descriptor when the writer and the reader
        # close theirs (the OS could hand the number to another file), nor write into a folder
        # that the caller is about to delete.
        with guard.shielded():
            read.close()
            write.close()
            progress.close()
    write.check_journal()
    stats.pipeline_seconds = time.perf_counter() - started


def _read_ahead(plan: MergePlan, policy: EnginePolicy) -> int:
    return policy.read_ahead(plan.elementwise)


def _tensors_to_compute(plan: MergePlan, done: set[str], policy: EnginePolicy) -> list[TensorPlan]:
    """The tensors outside the ``done`` shards (neither read nor computed again), in the order
    they are computed."""
    skip = {e.spec.name for s in plan.shards if s.filename in done for e in s.entries}
    todo = [t for t in plan.tensors if t.name not in skip]
    if not policy.big_first:
        return todo
    return compute_order(todo, _read_ahead(plan, policy), policy.big_share)


def _pieces(plan: MergePlan, todo: list[TensorPlan], policy: EnginePolicy) -> Iterator[Piece]:
    lora_models = {k for k, m in plan.models.items() if m.lora_folder is not None}
    return split_pieces(todo, plan.method, lora_models, policy.chunk_elements)


class ReadStage:
    """Reads the inputs of the pieces ahead of the computation, on its own thread(s)."""

    def __init__(
        self,
        plan: MergePlan,
        device: str,
        warn: Callable[[str], None],
        policy: EnginePolicy,
        stats: RunStats | None = None,
    ) -> None:
        self.loader = TensorLoader(plan, device, warn, policy)
        self._stats = stats or RunStats()
        self._prefetch = policy.prefetch
        self._pool = ThreadPoolExecutor(policy.read_threads, thread_name_prefix="meldkit-read")
        self._window: deque[tuple[Piece, Future[list[torch.Tensor]]]] = deque()

    def ahead(
        self, pieces: Iterator[Piece], read_ahead: int
    ) -> Iterator[tuple[Piece, list[torch.Tensor]]]:
        """Each of ``pieces`` with its inputs, in order; the next ones are read meanwhile, up
        to ``read_ahead`` bytes of input."""
        self._refill(pieces, read_ahead)
        while self._window:
            piece, future = self._window.popleft()
            waited = time.perf_counter()
            inputs = future.result()
            self._stats.wait_read += time.perf_counter() - waited
            self._refill(pieces, read_ahead)
            yield piece, inputs

    def _refill(self, pieces: Iterator[Piece], read_ahead: int) -> None:
        # Always at least one piece, however large: the bytes bound keeps huge tensors from
        # piling up, not the merge from progressing.
        while len(self._window) <= self._prefetch:
            queued = sum(p.input_bytes for p, _ in self._window)
            if self._window and queued >= read_ahead:
                return
            nxt = next(pieces, None)
            if nxt is None:
                return
            self._window.append((nxt, self._pool.submit(self._load, nxt)))

    def _load(self, piece: Piece) -> list[torch.Tensor]:
        started = time.perf_counter()
        inputs = self.loader.load(piece.tensor, piece.rows)
        self._stats.add_read(time.perf_counter() - started, piece.input_bytes)
        return inputs

    def close(self) -> None:
        """Cancel the reads not started, wait for the one in progress, close the inputs."""
        for _, future in self._window:
            future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.loader.close()


class ComputeStage:
    """Runs the method on one piece, in the calling thread, and checks the result for NaN/Inf."""

    def __init__(
        self,
        plan: MergePlan,
        fn: MergeFunction,
        device: str,
        seed: int | None,
        loader: TensorLoader,
        norm_factors: dict[str, float] | None = None,
    ) -> None:
        self._fn = fn
        self._native = plan.method.native_inputs
        self._factors = norm_factors  # per input model, from the norm_match pre-pass
        self._device = device
        self._seed = seed
        self._loader = loader

    def run(
        self, piece: Piece, inputs: list[torch.Tensor], stats: RunStats | None = None
    ) -> torch.Tensor:
        """The output of ``piece`` on the CPU, in the output dtype; ``inputs`` is consumed.
        ``stats`` receives the time it took."""
        started = time.perf_counter()
        tensor = piece.tensor
        ctx = MergeContext(tensor.name, self._seed, self._device, tensor.out_dtype)
        factors = None
        if self._factors is not None and tensor.norm_match:
            factors = [self._factors.get(s.model, 1.0) for s in tensor.sources]
        # Rescaled inputs are computed in the work dtype: no native (bf16) inputs for them.
        native = self._native and factors is None
        result = compute_tensor(
            tensor, inputs, self._fn, ctx, self._device, piece.rows, native, input_factors=factors
        )
        self._loader.check_result(tensor, piece.rows, result)
        if stats is not None:
            stats.add_compute(tensor.name, time.perf_counter() - started)
        return result


class WriteStage:
    """Writes finished pieces into their shards, on its own thread(s), while the next ones are
    computed; a completed shard is checksummed for the journal on a thread of its own."""

    def __init__(
        self, tmp: Path, journal: Journal, policy: EnginePolicy, stats: RunStats | None = None
    ) -> None:
        self._tmp = tmp
        self._journal = journal
        self._policy = policy
        self._stats = stats or RunStats()
        self._pool = ThreadPoolExecutor(policy.write_threads, thread_name_prefix="meldkit-write")
        # Hashing a finished shard reads it back: a thread of its own keeps that off the
        # writer's path.
        self._hashes = ThreadPoolExecutor(1, thread_name_prefix="meldkit-journal")
        self._hash_jobs: list[Future[None]] = []
        self._in_flight: deque[Future[None]] = deque()
        self._writer: ShardedWriter | None = None
        self._write: Callable[[str, torch.Tensor, int | None], None] = _unopened

    def open(self, plan: MergePlan, completed: list[str]) -> None:
        """Open the plan's shards in ``tmp``; those ``completed`` earlier are checked and kept."""
        self._writer = ShardedWriter(
            self._tmp,
            plan.shards,
            on_shard_complete=self._shard_complete,
            completed=completed,
            writeback=self._policy.writeback,
        )
        self._write = self._timed(_slowed(self._writer.write))

    def _timed(
        self, write: Callable[[str, torch.Tensor, int | None], None]
    ) -> Callable[[str, torch.Tensor, int | None], None]:
        def timed(name: str, tensor: torch.Tensor, row_start: int | None) -> None:
            started = time.perf_counter()
            write(name, tensor, row_start)
            nbytes = tensor.numel() * tensor.element_size()
            self._stats.add_write(time.perf_counter() - started, nbytes)

        return timed

    def _shard_complete(self, name: str) -> None:
        self._hash_jobs.append(self._hashes.submit(self._journal.record, name))

    def put(self, piece: Piece, result: torch.Tensor) -> None:
        """Queue ``result`` for writing, and wait while more than ``write_backlog`` finished
        pieces are still queued before it."""
        row_start = piece.rows[0] if piece.rows else None
        self._in_flight.append(self._pool.submit(self._write, piece.tensor.name, result, row_start))
        backlog = self._policy.write_backlog
        waited = time.perf_counter()
        while len(self._in_flight) > backlog or (self._in_flight and self._in_flight[0].done()):
            self._in_flight.popleft().result()
        self._stats.wait_write += time.perf_counter() - waited

    def finish(self) -> None:
        """Wait for every write, write the index; stop checksumming."""
        waited = time.perf_counter()
        while self._in_flight:
            self._in_flight.popleft().result()
        assert self._writer is not None, "open() first"
        self._writer.finish()
        self._stats.wait_write += time.perf_counter() - waited
        # Every tensor is written and the folder is about to be published: hashing the last
        # shards for a resume that can no longer be needed would only delay it.
        self._journal.stop_recording()

    def close(self) -> None:
        """Wait for the write in progress (dropping queued ones), close the shards, and wait
        for the checksums in progress."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._writer is not None:
            self._writer.abort()
        self._hashes.shutdown(wait=True)

    def check_journal(self) -> None:
        """Raise the error of a journal entry that could not be written: it fails the merge."""
        for job in self._hash_jobs:
            job.result()


def _unopened(name: str, tensor: torch.Tensor, row_start: int | None) -> None:
    raise RuntimeError("internal error: WriteStage.open() was not called")


def _slowed(
    write: Callable[[str, torch.Tensor, int | None], None],
) -> Callable[[str, torch.Tensor, int | None], None]:
    """``write``, delayed by the :data:`SLOW_WRITE_ENV` test hook when it is set."""
    delay = _slow_write_delay()
    if not delay:
        return write

    def slow(name: str, tensor: torch.Tensor, row_start: int | None) -> None:
        time.sleep(delay)
        write(name, tensor, row_start)

    return slow


def _slow_write_delay() -> float:
    try:
        return max(0.0, float(os.environ.get(SLOW_WRITE_ENV) or 0))
    except ValueError:
        return 0.0
