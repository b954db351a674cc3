"""Executing a plan: the only place where io and methods meet.

The run is orchestrated here: check the destination, create the temporary output folder
(:mod:`meldkit.execute.output`) and its resume journal (:mod:`meldkit.execute.journal`), run
the read -> compute -> write pipeline over the tensors (:mod:`meldkit.execute.pipeline`) while
config, tokenizer and model card are written beside them, and publish the folder. How the
pipeline runs (read-ahead, block sizes, threads, order) is the run's
:class:`~meldkit.execute.policy.EnginePolicy`.

Everything is written into the temporary folder, which is renamed into place at the very end,
so no interruption ever leaves a folder that looks complete:

* Ctrl-C or SIGTERM stops the run at the next tensor, waits for the reads and writes in
  progress (bounded: one tensor each), removes the temporary folder and raises
  :class:`~meldkit.errors.MergeInterrupted`. With ``resume`` the shards already completed (and
  their journal) are kept instead, so the next ``resume`` run continues from them.
* Any other failure (a full disk, a corrupt input, a bug) cleans up the same way.
* A crash (SIGKILL, power cut) leaves the temporary folder; ``resume`` continues from the
  shards its journal vouches for (:mod:`meldkit.execute.journal`), a plain run deletes it.

What is kept after a failure, and what the user is told, is :mod:`meldkit.execute.stopping`;
the progress bar and its final line :mod:`meldkit.execute.progress`; the ``verbose`` timings
:mod:`meldkit.execute.timings`.
"""

from __future__ import annotations

import shutil
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from meldkit.errors import (
    MeldError,
    MergeRuntimeError,
    PublishRefused,
    disk_full,
    is_disk_full,
)
from meldkit.execute.device import resolve_device
from meldkit.execute.interrupt import Interrupted, InterruptGuard
from meldkit.execute.journal import Journal, plan_fingerprint
from meldkit.execute.output import (
    PartialFolder,
    check_free_space,
    check_output_folder,
    partial_folder,
    prepare_partial,
    publish,
)
from meldkit.execute.pipeline import run_pipeline
from meldkit.execute.policy import EnginePolicy, policy_from_environment
from meldkit.execute.progress import Progress, final_line
from meldkit.execute.resume import resumable_shards, start_journal
from meldkit.execute.stopping import abandon, add_kept_hint, interrupted_error
from meldkit.execute.timings import RunStats, summary_lines
from meldkit.plan.planner import MergePlan

__all__ = ["RunOptions", "execute_plan", "partial_path"]


@dataclass(frozen=True)
class RunOptions:
    """How to execute a plan (the plan itself fixes what is computed).

    ``policy``: the engine's tuning knobs; None takes the defaults with the overrides of the
    ``MELDKIT_ENGINE_POLICY`` environment variable (:mod:`meldkit.execute.policy`).
    ``verbose``: from 1, a successful merge ends with notes on where its time went.
    """

    device: str = "cpu"
    threads: int | None = None
    seed: int | None = None
    quiet: bool = False
    copy_tokenizer: bool = True
    write_model_card: bool = True
    overwrite: bool = False
    resume: bool = False
    policy: EnginePolicy | None = None
    verbose: int = 0


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
    start afresh); ``on_info`` progress notes (how much a resume could reuse, the one-off
    compilation of the CPU kernels, and with ``options.verbose`` the timings). Raises
    :class:`~meldkit.errors.OutputError` before any work for an unusable destination,
    :class:`~meldkit.errors.MergeInterrupted` on SIGINT/SIGTERM and
    :class:`~meldkit.errors.MergeRuntimeError` for failures while merging; in every case the
    destination is left as it was.
    """
    stats = RunStats(planning=getattr(plan, "planning_seconds", None), method=plan.method.name)
    options = options or RunOptions()
    policy = options.policy or policy_from_environment()
    out = Path(out)
    warn = on_warning or _ignore
    info = on_info or _ignore
    progress = Progress(Progress.wanted(options.quiet), info, stats)
    check_output_folder(out, _input_folders(plan), options.overwrite)
    device = resolve_device(options.device)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(policy.math_threads(options.threads))
    try:
        _execute(plan, out, options, policy, device, warn, info, progress, stats)
    finally:
        torch.set_num_threads(previous_threads)
    stats.finish()
    if progress.enabled:
        print(final_line(stats), file=sys.stderr)  # where the bar was: it is the bar's last word
    if options.verbose >= 1:
        for line in summary_lines(stats):
            info(line)
    return out


def _execute(
    plan: MergePlan,
    out: Path,
    options: RunOptions,
    policy: EnginePolicy,
    device: str,
    warn: Callable[[str], None],
    info: Callable[[str], None],
    progress: Progress,
    stats: RunStats,
) -> None:
    fingerprint = plan_fingerprint(plan, device, options.seed)
    # Warnings and notes may come while the bar is drawn (from the reader, the metadata thread).
    warn, info = progress.wrap(warn), progress.wrap(info)
    stats.shards = len(plan.shards)
    stats.read_threads, stats.write_threads = policy.read_threads, policy.write_threads
    partial: PartialFolder | None = None
    journal: Journal | None = None
    computing = False
    with InterruptGuard() as guard:
        try:
            resumable = 0 if options.resume else resumable_shards(out, fingerprint)
            partial = prepare_partial(out, options.resume, overwrite=options.overwrite)
            if resumable:
                info(
                    f"removed an interrupted earlier merge of {out} ({resumable} shard(s) done); "
                    "--resume would have continued it"
                )
            journal, completed = start_journal(
                plan, out, partial.path, fingerprint, policy, options.resume, warn, info
            )
            stats.shards_reused = len(completed)
            remaining = sum(s.file_size for s in plan.shards if s.filename not in completed)
            check_free_space(out, remaining)
            computing = True
            # config, tokenizer and card do not depend on the tensors: written meanwhile (their
            # imports and copies took 0.4-0.6 s at the end of every merge), and always finished
            # before the folder is published or abandoned.
            metadata = ThreadPoolExecutor(1, thread_name_prefix="meldkit-metadata")
            try:
                written = metadata.submit(_write_metadata, plan, partial.path, options, warn)
                run_pipeline(
                    plan,
                    partial.path,
                    device,
                    options.seed,
                    policy,
                    journal,
                    completed,
                    guard,
                    warn,
                    progress,
                    stats,
                )
                publishing = time.perf_counter()
                written.result()
            finally:
                metadata.shutdown(wait=True)
            with guard.shielded(raise_after=False):
                journal.discard()
                publish(partial.path, out, options.overwrite)
            stats.publish_seconds = time.perf_counter() - publishing
        except (Interrupted, KeyboardInterrupt) as exc:
            signum = exc.signum if isinstance(exc, Interrupted) else int(signal.SIGINT)
            with guard.shielded(raise_after=False):
                kept = abandon(partial, journal, options.resume)
            shards = len(plan.shards)
            raise interrupted_error(out, partial, kept, shards, signum, options.resume) from None
        except PublishRefused:
            raise  # the finished model stays in the temporary folder, as the message says
        except BaseException as exc:
            with guard.shielded(raise_after=False):
                kept = abandon(partial, journal, options.resume)
            error = _as_meld_error(exc, computing)
            if error is None:
                raise
            add_kept_hint(error, kept, len(plan.shards), partial)
            if error is exc:
                raise
            raise error from (None if isinstance(exc, OSError) else exc)
        finally:
            if partial is not None:
                partial.release()


def _as_meld_error(exc: BaseException, computing: bool) -> MeldError | None:
    """The user-facing error for ``exc`` (itself when it is one), None for a bug."""
    if isinstance(exc, OSError):
        return _os_failure(exc)
    if computing and isinstance(exc, MeldError) and not isinstance(exc, MergeRuntimeError):
        # Found while merging (an input changed after planning, say): a runtime failure.
        return MergeRuntimeError(exc.message, exc.hint)
    return exc if isinstance(exc, MeldError) else None


def _os_failure(exc: OSError) -> MergeRuntimeError:
    where = exc.filename or "the output"
    if is_disk_full(exc):
        return disk_full(where)
    return MergeRuntimeError(f"file error while merging: {where}: {exc.strerror or exc}")


def _write_json(path: Path, data: Any) -> None:
    import json

    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_metadata(
    plan: MergePlan, tmp: Path, options: RunOptions, warn: Callable[[str], None]
) -> None:
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
