"""What a failed or interrupted run leaves behind, and what it tells the user about it.

Without ``--resume`` nothing stays. With it, the shards the journal vouches for stay in the
temporary folder (with the journal) for the next ``--resume`` run, and the message says how
many; when none was finished the folder goes too, and the message says that instead of
promising a continuation. The hint always matches what was left.
"""

from __future__ import annotations

from pathlib import Path

from meldkit.errors import MeldError, MergeInterrupted
from meldkit.execute.interrupt import signal_name
from meldkit.execute.journal import Journal
from meldkit.execute.output import PartialFolder

__all__ = ["abandon", "interrupted_error", "add_kept_hint"]


def abandon(partial: PartialFolder | None, journal: Journal | None, resume: bool) -> int:
    """Clean up after a failed or interrupted run; returns the number of shards kept.

    With ``resume`` the shards the journal vouches for stay (with the journal) for the next
    ``--resume`` run; everything else, and without ``resume`` or with no finished shard the
    whole folder, is deleted.
    """
    if partial is None:
        return 0
    if resume and journal is None:
        # Stopped while checking the earlier run's shards: leave them for the next --resume.
        previous = Journal.read(partial.path)
        if previous and previous["shards"]:
            return len(previous["shards"])
    done = journal.completed() if journal is not None else []
    if resume and done and journal is not None:
        journal.prune(keep=done)
        return len(done)
    partial.remove()
    return 0


def _shards(n: int) -> str:
    return f"{n} shard" if n == 1 else f"{n} shards"


def _kept_words(kept: int, total: int, partial: Path) -> str:
    verb = "is" if kept == 1 else "are"
    return f"{kept} of {_shards(total)} {verb} kept in {partial}"


def interrupted_error(
    out: Path,
    partial: PartialFolder | None,
    kept: int,
    shards: int,
    signum: int,
    resume: bool,
) -> MergeInterrupted:
    """The error of a run stopped by ``signum``, saying what stayed and how to go on."""
    what = signal_name(signum)
    if kept and partial is not None:
        return MergeInterrupted(
            f"interrupted by {what}; {_kept_words(kept, shards, partial.path)} and nothing was "
            f"written to {out}",
            "run the same command again with --resume to continue from them",
            signum,
        )
    if resume:
        return MergeInterrupted(
            f"interrupted by {what} before any shard was finished; nothing was kept and "
            f"nothing was written to {out}",
            "run the same command again with --resume (it starts from the beginning)",
            signum,
        )
    return MergeInterrupted(
        f"interrupted by {what}; the temporary files were removed and nothing was written to {out}",
        "nothing was kept: run the same command again (add --resume to keep the finished "
        "shards if it is interrupted again)",
        signum,
    )


def add_kept_hint(error: MeldError, kept: int, shards: int, partial: PartialFolder | None) -> None:
    """Tell the user of a failed ``--resume`` run that its finished shards stayed (the error's
    own hint says how to fix the cause; this says how to continue afterwards)."""
    if not kept or partial is None:
        return
    more = (
        f"{_kept_words(kept, shards, partial.path)}: once that is fixed, run the same command "
        "again with --resume to continue"
    )
    error.hint = f"{error.hint}; {more}" if error.hint else more
