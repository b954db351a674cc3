"""meldkit's user-facing exceptions.

Every problem a user can cause or fix is raised as a :class:`MeldError` (or a subclass) with a
one-line ``message`` and an optional ``hint`` saying how to fix it. The CLI prints
``error: <message>`` and ``hint: <hint>`` and exits with :attr:`MeldError.exit_code`; only
``--debug`` shows a traceback. Problems found before any computation (recipe, inputs, plan)
exit with 2; failures while merging exit with 1.

What deserves attention without stopping a merge (an ignored recipe key, NaN inputs) is a
warning: the CLI prints ``warning: <message>``, the Python API emits a :class:`MeldWarning`.
"""

from __future__ import annotations

import difflib
import errno
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = [
    "MeldError",
    "MeldWarning",
    "OptionError",
    "RecipeError",
    "InputError",
    "PlanError",
    "MergeRuntimeError",
    "MergeInterrupted",
    "OutputError",
    "PublishRefused",
    "did_you_mean",
    "disk_full",
    "is_disk_full",
]


class MeldError(Exception):
    """Base of all meldkit errors: a message, a hint, and the CLI exit code."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} (hint: {self.hint})"
        return self.message

    def respell(self, spell: Callable[[str], str]) -> None:
        """Rewrite the message, the hint and any ``problems`` list with ``spell``, in place (the
        class, the other attributes and the traceback stay): how the Python API names options."""
        self.message = spell(self.message)
        self.args = (self.message,)
        if self.hint:
            self.hint = spell(self.hint)
        # PlanError and the recipe's RecipeProblems carry one line per problem besides the summary.
        problems = getattr(self, "problems", None)
        if isinstance(problems, list):
            self.problems = [spell(p) if isinstance(p, str) else p for p in problems]


class MeldWarning(UserWarning):
    """A recipe, plan or merge problem that does not stop the merge, from the Python API.

    :func:`meldkit.run_merge` and :func:`meldkit.plan_merge` emit these through Python's
    :mod:`warnings` unless given an ``on_warning`` callback; the message is the text the CLI
    prints after ``warning:``, with keyword options for flags (``copy_tokenizer=False``).
    """


class OptionError(MeldError, TypeError):
    """A keyword option of the Python API that does not exist (a TypeError, as Python's own)."""


class RecipeError(MeldError):
    """The recipe (YAML or dict) is malformed or asks for something impossible."""


class InputError(MeldError):
    """An input model is missing, unreadable, corrupt or inconsistent."""


class PlanError(MeldError):
    """The recipe and the inputs do not fit together; carries every problem found.

    ``problems`` holds one line per problem; ``message`` summarises them all.
    """

    def __init__(self, problems: list[str], hint: str | None = None) -> None:
        self.problems = list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            message = f"{len(self.problems)} problems found while planning:\n{lines}"
        super().__init__(message, hint)


class OutputError(MeldError):
    """The output folder cannot be used (occupied, inside an input, not writable)."""


class MergeRuntimeError(MeldError):
    """A failure while computing or writing (disk full, interrupted, device error)."""

    exit_code = 1


class MergeInterrupted(MergeRuntimeError):
    """The merge was stopped by a signal; ``exit_code`` is the shell's ``128 + signal``."""

    def __init__(self, message: str, hint: str | None, signum: int) -> None:
        super().__init__(message, hint)
        self.signum = signum
        self.exit_code = 128 + int(signum)


class PublishRefused(OutputError):
    """The destination became occupied while merging; the finished model stays in ``kept``."""

    exit_code = 1  # found at the very end of a run, not before computing

    def __init__(self, message: str, hint: str, kept: Path) -> None:
        super().__init__(message, hint)
        self.kept = kept


def is_disk_full(exc: OSError) -> bool:
    """Whether ``exc`` says the file system (or the user's quota on it) has no room left."""
    return exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def disk_full(where: object) -> MergeRuntimeError:
    """The error for a write to ``where`` (a path, or words naming it) that found the disk full."""
    return MergeRuntimeError(
        f"disk full while writing {where}",
        hint="free space on that disk or choose another output folder",
    )


def did_you_mean(word: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest choices, or ``""`` when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=n, cutoff=0.6)
    if not close:
        return ""
    if len(close) == 1:
        return f" Did you mean '{close[0]}'?"
    return " Did you mean " + ", ".join(f"'{c}'" for c in close[:-1]) + f" or '{close[-1]}'?"
