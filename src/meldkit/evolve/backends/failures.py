"""The errors both backends raise for a failed evaluator, worded the same on each."""

from __future__ import annotations

from typing import Any

from meldkit.errors import MergeRuntimeError

_REPR_LIMIT = 120  # a genome can hold hundreds of numbers; the message shows its start


def describe_candidate(candidate: Any) -> str:
    """A short repr that names a candidate in an error message."""
    text = repr(candidate)
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."


def error_text(exc: BaseException) -> str:
    """``"ValueError: message"``: the original error, as the user's code raised it."""
    return f"{type(exc).__name__}: {exc}"


def candidate_failed(index: int, candidate: Any, error: str) -> MergeRuntimeError:
    """The error for an evaluator that raised ``error`` on the generation's candidate ``index``."""
    return MergeRuntimeError(
        f"candidate {index} {describe_candidate(candidate)} failed in the evaluator: {error}",
        hint="fix the fitness function or narrow the search bounds; --debug shows the "
        "evaluator's traceback",
    )


def factory_failed(error: str, where: str = "") -> MergeRuntimeError:
    """The error for an evaluator factory that raised ``error`` (``where``: " on a Ray worker")."""
    return MergeRuntimeError(
        f"could not build the evaluator{where}: {error}",
        hint="check the fitness settings (models, data files, module:function); --debug shows "
        "the traceback",
    )
