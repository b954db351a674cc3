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
"""

from __future__ import annotations

import shutil
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from meldkit.errors import (
    MeldError,
    MergeInterrupted,
    MergeRuntimeError,
    PublishRefused,
    disk_full,
    is_disk_full,
)
from meldkit.execute.device import resolve_device
from meldkit.execute.interrupt import Interrupted, InterruptGuard, signal_name
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
from meldkit.plan.planner import MergePlan

__all__ = ["RunOptions", "execute_plan", "partial_path"]


@dataclass(frozen=True)
class RunOptions:
    """How to execute a plan (the plan itself fixes what is computed).

    ``policy``: the engine's tuning knobs; None takes the defaults with the overrides of the
    ``MELDKIT_ENGINE_POLICY`` environment variable (:mod:`meldkit.execute.policy`).
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
    :class:`~meldkit.errors.MergeInterrupted` on SIGINT/SIGTERM and
    :class:`~meldkit.errors.MergeRuntimeError` for failures while merging; in every case the
    destination is left as it was.
    """
    options = options or RunOptions()
    policy = options.policy or policy_from_environment()
    out = Path(out)
    warn = on_warning or _ignore
    info = on_info or _ignore
    check_output_folder(out, _input_folders(plan), options.overwrite)
    device = resolve_device(options.device)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(policy.math_threads(options.threads))
    try:
        return _execute(plan, out, options, policy, device, warn, info)
    finally:
        torch.set_num_threads(previous_threads)


def _execute(
    plan: MergePlan,
    out: Path,
    options: RunOptions,
    policy: EnginePolicy,
    device: str,
    warn: Callable[[str], None],
    info: Callable[[str], None],
) -> Path:
    fingerprint = plan_fingerprint(plan, device, options.seed)
    partial: PartialFolder | None = None
    journal: Journal | None = None
    computing = False
    with InterruptGuard() as guard:
        try:
            resumable = 0 if options.resume else _resumable_shards(out, fingerprint)
            partial = prepare_partial(out, options.resume)
            if resumable:
                info(
                    f"removed an interrupted earlier merge of {out} ({resumable} shard(s) done); "
                    "--resume would have continued it"
                )
            journal, completed = _start_journal(
                plan, out, partial.path, fingerprint, policy, options.resume, warn, info
            )
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
                    options.quiet,
                )
                written.result()
            finally:
                metadata.shutdown(wait=True)
            with guard.shielded(raise_after=False):
                journal.discard()
                publish(partial.path, out, options.overwrite)
        except (Interrupted, KeyboardInterrupt) as exc:
            signum = exc.signum if isinstance(exc, Interrupted) else int(signal.SIGINT)
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
    policy: EnginePolicy,
    resume: bool,
    warn: Callable[[str], None],
    info: Callable[[str], None],
) -> tuple[Journal, list[str]]:
    """Open the journal of ``tmp``; with ``resume``, adopt the earlier run's verified shards."""
    journal = Journal(tmp, fingerprint, policy.hash_chunk_bytes)
    completed: list[str] = []
    if resume:
        previous = Journal.read(tmp)
        if previous is None:
            if any(tmp.iterdir()):
                warn(f"--resume: {tmp} has no usable journal; starting from the beginning")
            else:
                info(
                    f"--resume: no interrupted merge of {out} to continue; starting from the beginning"
                )
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
            info(
                f"resuming: {len(completed)} of {len(plan.shards)} shard(s) already written and verified"
            )
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


def _interrupted_error(
    out: Path, partial: PartialFolder | None, kept: int, shards: int, signum: int
) -> MergeInterrupted:
    what = signal_name(signum)
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
