"""Executing a plan: the only place where io and methods meet.

Three stages overlap: a loader thread reads the inputs of the next tensors (``prefetch`` ahead),
the calling thread runs the method, and a writer thread puts finished tensors in place in their
shard. At most ``prefetch + 2`` tensors' data is alive at any time, whatever the model size.

Everything is written into a temporary folder (:mod:`meldkit.execute.output`) that is renamed
into place at the very end, so no interruption ever leaves a folder that looks complete:

* Ctrl-C or SIGTERM stops the run at the next tensor, waits for the reads and writes in
  progress (bounded: one tensor each), removes the temporary folder and raises
  :class:`MergeInterrupted`. With ``resume`` the shards already completed (and their journal)
  are kept instead, so the next ``resume`` run continues from them.
* Any other failure (a full disk, a corrupt input, a bug) cleans up the same way.
* A crash (SIGKILL, power cut) leaves the temporary folder; ``resume`` continues from the
  shards its journal vouches for (:mod:`meldkit.execute.journal`), a plain run deletes it.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import torch

from meldkit.errors import MeldError, MergeRuntimeError
from meldkit.execute.device import resolve_device
from meldkit.execute.journal import Journal, plan_fingerprint
from meldkit.execute.output import (
    PartialFolder,
    PublishRefused,
    check_free_space,
    check_output_folder,
    partial_folder,
    prepare_partial,
    publish,
)
from meldkit.execute.tensors import Piece, TensorLoader, compute_order, compute_tensor, split_pieces
from meldkit.io.writer import ShardedWriter
from meldkit.methods.registry import MergeContext, load_merge_function
from meldkit.plan.planner import MergePlan

__all__ = ["RunOptions", "MergeInterrupted", "execute_plan", "partial_path", "SLOW_WRITE_ENV"]

#: Test hook: seconds to sleep before each tensor write, so tests can interrupt a tiny merge
#: reliably while it is busy. Never set it outside tests.
SLOW_WRITE_ENV = "MELDKIT_TEST_SLOW_WRITE"

_SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}


@dataclass(frozen=True)
class RunOptions:
    """How to execute a plan (the plan itself fixes what is computed)."""

    device: str = "cpu"
    threads: int | None = None
    seed: int | None = None
    quiet: bool = False
    copy_tokenizer: bool = True
    write_model_card: bool = True
    overwrite: bool = False
    resume: bool = False
    prefetch: int = 2


class MergeInterrupted(MergeRuntimeError):
    """The merge was stopped by a signal; ``exit_code`` is the shell's ``128 + signal``."""

    def __init__(self, message: str, hint: str | None, signum: int) -> None:
        super().__init__(message, hint)
        self.signum = signum
        self.exit_code = 128 + int(signum)


class _Interrupted(BaseException):
    """Raised in the main thread by the first SIGINT/SIGTERM of a run (see _InterruptGuard)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _InterruptGuard:
    """Turns SIGINT and SIGTERM into :class:`_Interrupted` in the main thread, once.

    Only the first signal raises: later ones arrive while the run is already cleaning up, and
    raising again would abandon that cleanup half-way (leaving threads writing into a folder
    that is being deleted). Inside :meth:`shielded` a first signal is only recorded, and raised
    when the shielded block ends, so cleanup and the final rename are never cut in two.
    A signal the process was started ignoring (e.g. SIGINT for ``cmd &``) stays ignored.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._raised = False
        self._shield = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    if signal.getsignal(sig) is signal.SIG_IGN:
                        continue
                    self._previous[sig] = signal.signal(sig, self._handler)
                except (ValueError, OSError):  # pragma: no cover - embedded interpreters
                    continue
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            return  # already stopping: let the cleanup finish
        self.signum = signum
        if self._shield == 0:
            self._raised = True
            raise _Interrupted(signum)

    @contextmanager
    def shielded(self, raise_after: bool = True) -> Iterator[None]:
        """Defer a first signal until the block ends (then raise it, unless ``raise_after`` is
        False: used for the final rename, after which the merge is complete anyway)."""
        self._shield += 1
        try:
            yield
        finally:
            self._shield -= 1
        if self._shield == 0 and self.signum is not None and not self._raised:
            self._raised = True
            if raise_after:
                raise _Interrupted(self.signum)


def _progress(total: int, quiet: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="tensor",
        desc="merging",
        disable=quiet or not sys.stderr.isatty(),
        leave=False,
    )


def _ignore(message: str) -> None:
    pass


def _input_folders(plan: MergePlan) -> list[Path]:
    folders = [m.folder for m in plan.models.values()]
    return folders + [m.lora_folder for m in plan.models.values() if m.lora_folder]


def execute_plan(
    plan: MergePlan,
    out: str | Path,
    options: RunOptions | None = None,
    on_warning: Callable[[str], None] | None = None,
    on_info: Callable[[str], None] | None = None,
) -> Path:
    """Run ``plan`` and write a complete Hugging Face model folder at ``out``.

    ``on_warning`` receives problems worth a user's attention (NaN inputs, a resume that has to
    start afresh); ``on_info`` progress notes (how much a resume could reuse). Raises
    :class:`~meldkit.errors.OutputError` before any work for an unusable destination,
    :class:`MergeInterrupted` on SIGINT/SIGTERM and :class:`MergeRuntimeError` for failures
    while merging; in every case the destination is left as it was.
    """
    options = options or RunOptions()
    out = Path(out)
    warn = on_warning or _ignore
    info = on_info or _ignore
    check_output_folder(out, _input_folders(plan), options.overwrite)
    device = resolve_device(options.device)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(options.threads or default_math_threads())
    try:
        return _execute(plan, out, options, device, warn, info)
    finally:
        torch.set_num_threads(previous_threads)


def default_math_threads() -> int:
    """Intra-op threads for the math: every core, up to 8. An element-wise method with a few
    operations per element (ram: 33 s with one thread on med, 19 s with two) needs them as
    much as the whole-tensor ones; a memory-bound one (linear) runs as fast either way, and
    the reader and writer threads mostly wait."""
    return max(1, min(os.cpu_count() or 2, 8))


def _execute(plan: MergePlan, out: Path, options: RunOptions, device: str,
             warn: Callable[[str], None], info: Callable[[str], None]) -> Path:
    fingerprint = plan_fingerprint(plan, device, options.seed)
    partial: PartialFolder | None = None
    journal: Journal | None = None
    computing = False
    with _InterruptGuard() as guard:
        try:
            resumable = 0 if options.resume else _resumable_shards(out, fingerprint)
            partial = prepare_partial(out, options.resume)
            if resumable:
                info(f"removed an interrupted earlier merge of {out} ({resumable} shard(s) done); "
                     "--resume would have continued it")
            journal, completed = _start_journal(plan, out, partial.path, fingerprint, options.resume, warn, info)
            remaining = sum(s.file_size for s in plan.shards if s.filename not in completed)
            check_free_space(out, remaining)
            computing = True
            # config, tokenizer and card do not depend on the tensors: written meanwhile (their
            # imports and copies took 0.4-0.6 s at the end of every merge), and always finished
            # before the folder is published or abandoned.
            metadata = ThreadPoolExecutor(1, thread_name_prefix="meldkit-metadata")
            try:
                written = metadata.submit(_write_metadata, plan, partial.path, options, warn)
                _write_tensors(plan, partial.path, device, options, warn, journal, completed, guard)
                written.result()
            finally:
                metadata.shutdown(wait=True)
            with guard.shielded(raise_after=False):
                journal.discard()
                publish(partial.path, out, options.overwrite)
        except (_Interrupted, KeyboardInterrupt) as exc:
            signum = exc.signum if isinstance(exc, _Interrupted) else int(signal.SIGINT)
            with guard.shielded(raise_after=False):
                kept = _abandon(partial, journal, options.resume)
            raise _interrupted_error(out, partial, kept, len(plan.shards), signum) from None
        except PublishRefused:
            raise  # the finished model stays in the temporary folder, as the message says
        except BaseException as exc:
            with guard.shielded(raise_after=False):
                _abandon(partial, journal, options.resume)
            if isinstance(exc, OSError):
                raise _os_failure(exc) from None
            if computing and isinstance(exc, MeldError) and not isinstance(exc, MergeRuntimeError):
                # Found while merging (an input changed after planning, say): a runtime failure.
                raise MergeRuntimeError(exc.message, exc.hint) from exc
            raise
        finally:
            if partial is not None:
                partial.release()
    return out


def _resumable_shards(out: Path, fingerprint: str) -> int:
    """How many shards a leftover run of the same merge has journaled (a plain run deletes them;
    the user should know that --resume would have kept them)."""
    previous = Journal.read(partial_folder(out))
    if previous is None or previous["fingerprint"] != fingerprint:
        return 0
    return len(previous["shards"])


def _start_journal(
    plan: MergePlan,
    out: Path,
    tmp: Path,
    fingerprint: str,
    resume: bool,
    warn: Callable[[str], None],
    info: Callable[[str], None],
) -> tuple[Journal, list[str]]:
    """Open the journal of ``tmp``; with ``resume``, adopt the earlier run's verified shards."""
    journal = Journal(tmp, fingerprint)
    completed: list[str] = []
    if resume:
        previous = Journal.read(tmp)
        if previous is None:
            if any(tmp.iterdir()):
                warn(f"--resume: {tmp} has no usable journal; starting from the beginning")
            else:
                info(f"--resume: no interrupted merge of {out} to continue; starting from the beginning")
        elif previous["fingerprint"] != fingerprint:
            warn(
                "--resume: the interrupted merge used another recipe, other inputs or other "
                "options; starting from the beginning"
            )
        else:
            sizes = {s.filename: s.file_size for s in plan.shards}
            completed = journal.adopt(
                previous, sizes, lambda name, why: warn(f"--resume: writing {name} again: {why}")
            )
            info(f"resuming: {len(completed)} of {len(plan.shards)} shard(s) already written and verified")
    # Half-written shards and metadata of an earlier run are not trusted: only verified shards stay.
    journal.prune(keep=completed)
    journal.save()
    return journal, completed


def _abandon(partial: PartialFolder | None, journal: Journal | None, resume: bool) -> int:
    """Clean up after a failed or interrupted run; returns the number of shards kept.

    With ``resume`` the shards the journal vouches for stay (with the journal) for the next
    ``--resume`` run; everything else, and without ``resume`` the whole folder, is deleted.
    """
    if partial is None:
        return 0
    if resume and journal is None:
        # Stopped while checking the earlier run's shards: leave them for the next --resume.
        previous = Journal.read(partial.path)
        return len(previous["shards"]) if previous else 0
    done = journal.completed() if journal is not None else []
    if resume and done and journal is not None:
        journal.prune(keep=done)
        return len(done)
    partial.remove()
    return 0


def _interrupted_error(out: Path, partial: PartialFolder | None, kept: int, shards: int, signum: int) -> MergeInterrupted:
    what = _SIGNAL_NAMES.get(signal.Signals(signum), f"signal {signum}")
    if kept and partial is not None:
        return MergeInterrupted(
            f"interrupted by {what}; {kept} of {shards} shard(s) are kept in {partial.path} and "
            f"nothing was written to {out}",
            "run the same command with --resume to continue",
            signum,
        )
    return MergeInterrupted(
        f"interrupted by {what}; the temporary files were removed and nothing was written to {out}",
        "run the same command again (with --resume, an interrupted merge keeps its finished "
        "shards for the next --resume run)",
        signum,
    )


def _os_failure(exc: OSError) -> MergeRuntimeError:
    where = exc.filename or "the output"
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return MergeRuntimeError(
            f"disk full while writing {where}",
            hint="free space on that disk or choose another output folder",
        )
    return MergeRuntimeError(f"file error while merging: {where}: {exc.strerror or exc}")


def _slow_write_delay() -> float:
    raw = os.environ.get(SLOW_WRITE_ENV)
    if not raw:
        return 0.0
    try:
        return max(0.0, float(raw))
    except ValueError:
        return 0.0


# Input bytes the loader may read ahead of the computation. Methods with whole-tensor
# statistics already hold one whole tensor's inputs while they compute, so they read less ahead.
READ_AHEAD_BYTES = 256 * 1024 * 1024
READ_AHEAD_WHOLE_TENSOR_BYTES = 64 * 1024 * 1024


def _write_tensors(
    plan: MergePlan,
    tmp: Path,
    device: str,
    options: RunOptions,
    warn: Callable[[str], None],
    journal: Journal,
    completed: list[str],
    guard: _InterruptGuard,
) -> None:
    done = set(completed)
    # Tensors of verified shards are neither read nor computed again.
    skip = {e.spec.name for s in plan.shards if s.filename in done for e in s.entries}
    read_ahead = READ_AHEAD_BYTES if plan.method.elementwise else READ_AHEAD_WHOLE_TENSOR_BYTES
    todo = compute_order([t for t in plan.tensors if t.name not in skip], read_ahead)
    fn = load_merge_function(plan.method)
    loader = TensorLoader(plan, device, warn)
    reads = ThreadPoolExecutor(1, thread_name_prefix="meldkit-read")
    writes = ThreadPoolExecutor(1, thread_name_prefix="meldkit-write")
    # Hashing a finished shard for the journal reads it back; a thread of its own keeps that
    # off the writer's path.
    hashes = ThreadPoolExecutor(1, thread_name_prefix="meldkit-journal")
    hash_jobs: list[Future[None]] = []
    writer: ShardedWriter | None = None
    bar = _progress(len(todo), options.quiet)
    window: deque[tuple[Piece, Future[list[torch.Tensor]]]] = deque()
    in_flight: deque[Future[None]] = deque()
    delay = _slow_write_delay()
    try:
        writer = ShardedWriter(
            tmp,
            plan.shards,
            on_shard_complete=lambda name: hash_jobs.append(hashes.submit(journal.record, name)),
            completed=done,
        )
        write: Callable[..., None] = writer.write
        if delay:
            def write(name: str, tensor: torch.Tensor, row_start: int | None = None,
                      _write: Callable[..., None] = writer.write) -> None:
                time.sleep(delay)
                _write(name, tensor, row_start)

        lora_models = {k for k, m in plan.models.items() if m.lora_folder is not None}
        upcoming = split_pieces(todo, plan.method, lora_models)

        def refill() -> None:
            # Read ahead up to `prefetch` pieces, but no more than `read_ahead` bytes of input
            # (always at least one piece), so huge tensors do not pile up in memory.
            while len(window) <= options.prefetch:
                queued = sum(p.input_bytes for p, _ in window)
                if window and queued >= read_ahead:
                    return
                nxt = next(upcoming, None)
                if nxt is None:
                    return
                window.append((nxt, reads.submit(loader.load, nxt.tensor, nxt.rows)))

        refill()
        while window:
            piece, future = window.popleft()
            raw = future.result()
            refill()
            tensor = piece.tensor
            ctx = MergeContext(tensor.name, options.seed, device, tensor.out_dtype)
            result = compute_tensor(tensor, raw, fn, ctx, device, piece.rows, plan.method.native_inputs)
            del raw
            loader.check_result(tensor, piece.rows, result)
            in_flight.append(writes.submit(write, tensor.name, result, piece.rows[0] if piece.rows else None))
            del result
            while len(in_flight) > 1 or (in_flight and in_flight[0].done()):
                in_flight.popleft().result()
            if piece.last:
                bar.update(1)
        while in_flight:
            in_flight.popleft().result()
        writer.finish()
        # Every tensor is written and the folder is about to be published: hashing the last
        # shards for a resume that can no longer be needed would only delay it.
        journal.stop_recording()
    finally:
        # Order matters: no thread may still touch a descriptor when the writer and the reader
        # close theirs (the OS could hand the number to another file), nor write into a folder
        # that the caller is about to delete.
        with guard.shielded():
            for _, f in window:
                f.cancel()
            reads.shutdown(wait=True, cancel_futures=True)
            writes.shutdown(wait=True, cancel_futures=True)
            if writer is not None:
                writer.abort()
            hashes.shutdown(wait=True)
            loader.close()
            bar.close()
    for job in hash_jobs:
        job.result()  # a journal entry that could not be written fails the merge


def _write_json(path: Path, data: Any) -> None:
    import json

    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_metadata(plan: MergePlan, tmp: Path, options: RunOptions, warn: Callable[[str], None]) -> None:
    from meldkit.card import write_card, write_recipe
    from meldkit.execute.tokenizer_step import write_tokenizer

    donor = plan.models[plan.donor]
    if plan.out_config is not None:
        _write_json(tmp / "config.json", plan.out_config)
    gen = donor.folder / "generation_config.json"
    if gen.is_file():
        shutil.copyfile(gen, tmp / "generation_config.json")
    if options.copy_tokenizer:
        write_tokenizer(plan, tmp, warn)
    elif plan.config.chat_template:
        warn("chat_template is dropped because --no-copy-tokenizer was given")
    if options.write_model_card:
        write_card(plan, tmp)
        write_recipe(plan, tmp)


def partial_path(out: str | Path) -> Path:
    """Where an interrupted run of ``out`` keeps its files (for --resume)."""
    return partial_folder(Path(out))
