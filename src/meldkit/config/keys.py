"""Recipe keys: the valid keys at each level, warnings for unknown ones, and "missing" errors.

MergeKit silently ignores keys it does not know, so a typo (``wieght:``, ``merge_methd:``) only
shows up later as a confusing "missing" error, or never. Here an unknown key is a warning that
names the closest valid key, and a missing required key names the unknown key that is most
likely its misspelling. ``--strict`` turns the warnings into errors, all reported together.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any

from meldkit.config.ranges import RANGE_HINT
from meldkit.errors import RecipeError, did_you_mean

__all__ = [
    "TOP_KEYS",
    "MODEL_KEYS",
    "SOURCE_KEYS",
    "SLICE_KEYS",
    "MODULE_KEYS",
    "TOKENIZER_KEYS",
    "TOKEN_KEYS",
    "RecipeProblems",
    "ParseLog",
    "check_keys",
    "expect_dict",
    "expect_list",
    "key_warning",
    "missing_key",
    "typo_of",
]

TOP_KEYS = (
    "merge_method", "models", "slices", "modules", "base_model", "parameters", "dtype",
    "out_dtype", "tokenizer_source", "tokenizer", "chat_template", "name",
)  # fmt: skip
MODEL_KEYS = ("model", "parameters")
SOURCE_KEYS = ("model", "layer_range", "parameters")
SLICE_KEYS = ("sources", "base_model", "parameters", "residual_weight")
MODULE_KEYS = ("models", "slices", "parameters")
TOKENIZER_KEYS = ("source", "tokens", "pad_to_multiple_of")
TOKEN_KEYS = ("source", "force")
# Method parameters users put at the top level by mistake; MergeKit ignores them there.
_COMMON_PARAMS = frozenset(
    {"weight", "density", "t", "lambda", "normalize", "int8_mask", "epsilon", "gamma"}
)


def _strict_hint(problems: Sequence[str]) -> str:
    each = "the key" if len(problems) == 1 else "each key"
    return f"remove or fix {each}, or drop --strict to only warn"


class RecipeProblems(RecipeError):
    """Several recipe problems found together; ``problems`` holds one line per problem.

    Shaped like :class:`~meldkit.errors.PlanError`, so the CLI folds it the same way.
    """

    def __init__(self, problems: Sequence[str], hint: str | None = None) -> None:
        self.problems = list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            message = f"{len(self.problems)} problems found in the recipe:\n{lines}"
        super().__init__(message, hint)


class ParseLog:
    """What parsing found that does not stop it: warnings, and layer_range problems.

    Both are kept until the whole recipe is read, so that every one is reported at once and
    exactly once: :meth:`finish` raises the range problems (unless the planner checks them
    itself, knowing the layer counts) and, under ``strict``, the warnings, together.
    """

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.warnings: list[str] = []
        self.range_problems: list[str] = []

    def warn(self, message: str) -> None:
        """Record one warning (a repeated one is kept once)."""
        if message not in self.warnings:
            self.warnings.append(message)

    def finish(self, check_ranges: bool) -> None:
        """Raise what was collected: range problems, then (under ``strict``) the warnings."""
        problems = list(self.range_problems) if check_ranges else []
        if self.strict:
            problems += self.warnings
        if problems:
            hint = RANGE_HINT if problems[0] in self.range_problems else _strict_hint(problems)
            raise RecipeProblems(problems, hint=hint)


def key_warning(key: str, known: Sequence[str], where: str = "") -> str:
    """The warning for the unknown ``key`` at ``where`` (``""``: the top level)."""
    place = f"{where}.{key}" if where else key
    if where == "" and key in _COMMON_PARAMS:
        return (
            f"'{place}' is a method parameter at the top level and is ignored; "
            "put it under 'parameters:'"
        )
    return f"unknown key '{place}' is ignored.{did_you_mean(key, known)}"


def check_keys(d: dict[str, Any], known: tuple[str, ...], where: str, log: ParseLog) -> None:
    """Warn about each key of ``d`` not in ``known``, with the closest valid key."""
    for key in d:
        if key not in known:
            log.warn(key_warning(str(key), known, where))


def typo_of(d: dict[str, Any], wanted: Iterable[str], known: Sequence[str]) -> tuple[str, str]:
    """The unknown key of ``d`` that most likely misspells one of ``wanted``, as (found, wanted);
    ``("", "")`` when there is none.

    An unknown key counts when its closest valid key is one of ``wanted`` (so ``sources`` is not
    offered for ``source`` when ``model`` is the one missing), or when only case differs.
    """
    wanted = list(wanted)
    for key in d:
        found = str(key)
        if found in known:
            continue
        for w in wanted:
            if found.lower() == w.lower():
                return found, w
        close = difflib.get_close_matches(found, list(known), n=1, cutoff=0.6)
        if close and close[0] in wanted:
            return found, close[0]
    return "", ""


def missing_key(
    d: dict[str, Any], wanted: str, known: Sequence[str], where: str, hint: str | None = None
) -> RecipeError:
    """``<where>: missing '<wanted>'``, naming the unknown key that looks like its misspelling."""
    found, _ = typo_of(d, [wanted], known)
    prefix = f"{where}: " if where else ""
    extra = f" (found '{found}': did you mean '{wanted}'?)" if found else ""
    return RecipeError(f"{prefix}missing '{wanted}'{extra}", hint=hint)


def expect_dict(value: Any, where: str) -> dict[str, Any]:
    """``value`` when it is a mapping, else a RecipeError naming ``where``."""
    if not isinstance(value, dict):
        raise RecipeError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
    return value


def expect_list(value: Any, where: str) -> list[Any]:
    """``value`` when it is a list, else a RecipeError naming ``where``."""
    if not isinstance(value, list):
        raise RecipeError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
    return value
