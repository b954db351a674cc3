"""What ``--resume`` reuses of an interrupted run, and what a plain run tells about one.

An interrupted run leaves its temporary folder with a journal (:mod:`meldkit.execute.journal`).
A ``--resume`` run of the same merge adopts the shards that still verify; a plain run deletes
the folder, and says that ``--resume`` would have continued from it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from meldkit.execute.journal import Journal
from meldkit.execute.output import partial_folder
from meldkit.execute.policy import EnginePolicy
from meldkit.plan.planner import MergePlan

__all__ = ["resumable_shards", "start_journal"]


def resumable_shards(out: Path, fingerprint: str) -> int:
    """How many shards a leftover run of the same merge has journaled (a plain run deletes them;
    the user should know that --resume would have kept them)."""
    previous = Journal.read(partial_folder(out))
    if previous is None or previous["fingerprint"] != fingerprint:
        return 0
    return len(previous["shards"])


def start_journal(
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
