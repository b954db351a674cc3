"""The fitness of a candidate merge: named terms, each scored on a loaded model, summed by weight.

A term scores one objective (higher is better) and returns its own value under its ``name`` plus
optional details (``"tinytasks.rev"``). :class:`Fitness` merges every term's dict and adds
``"fitness"``, the weighted sum the search maximises::

    fitness = sum(term.weight * result[term.name] for term in terms)

This module and the option checks below never import torch: the CLI's help imports them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from meldkit.errors import OptionError, RecipeError, did_you_mean

__all__ = ["FitnessTerm", "Fitness", "FITNESS_KEY"]

#: The key of the weighted sum in :meth:`Fitness.__call__`'s result.
FITNESS_KEY = "fitness"


@runtime_checkable
class FitnessTerm(Protocol):
    """One scored objective; higher is better.

    A term may also carry ``needs_tokenizer: bool`` (missing means True): whether :meth:`score`
    reads its ``tokenizer`` argument, so a search scoring only TinyTasks can skip loading one.
    """

    name: str
    weight: float

    def score(self, model: Any, tokenizer: Any) -> dict[str, float]:
        """Evaluate a loaded transformers causal LM (eval mode, any device).

        Returns ``{name: value}`` plus optional details such as ``{"tinytasks.rev": 0.9}``.
        """
        ...


@dataclass
class Fitness:
    """A weighted sum of fitness terms, called on a loaded model and its tokenizer.

    Example::

        fitness = parse_fitness([{"tinytasks": {"n": 64}}], base_dir=Path("."))
        fitness(model, None)  # {"tinytasks": 0.41, "tinytasks.rev": 0.5, ..., "fitness": 0.41}
    """

    terms: list[FitnessTerm]

    @property
    def needs_tokenizer(self) -> bool:
        """False when no term reads the tokenizer (TinyTasks has its own character encoding)."""
        return any(getattr(term, "needs_tokenizer", True) for term in self.terms)

    @property
    def names(self) -> list[str]:
        """Every term's name, in order: the keys of the terms' own values in the result."""
        return [term.name for term in self.terms]

    def __call__(self, model: Any, tokenizer: Any) -> dict[str, float]:
        """Score ``model`` with every term; every term's dict merged, plus ``"fitness"``."""
        result: dict[str, float] = {}
        total = 0.0
        for term in self.terms:
            scores = term.score(model, tokenizer)
            if term.name not in scores:
                raise RecipeError(
                    f"fitness term {term.name!r} returned no value under its name"
                    f" (it returned {', '.join(map(repr, scores)) or 'nothing'})",
                    hint="a term's score() returns {name: value, ...}",
                )
            result.update(scores)
            total += float(term.weight) * float(scores[term.name])
        result[FITNESS_KEY] = total
        return result


# --------------------------------------------------------------------------- option checks
# Shared by every kind's parser: each names the entry ("fitness[1]: perplexity: ...") and says
# how to fix the value, so a search file's mistakes read the same whatever the kind.


def check_keys(options: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    """Refuse an option that ``allowed`` does not list, with the closest names as a hint."""
    allowed = sorted(allowed)
    for key in options:
        if key not in allowed:
            raise OptionError(
                f"{where}: unknown option {key!r}.{did_you_mean(str(key), allowed)}",
                hint="its options are " + ", ".join(allowed),
            )


def as_mapping(value: Any, where: str, example: str) -> Mapping[str, Any]:
    """``value`` as a mapping of options, or an OptionError showing ``example``."""
    if not isinstance(value, Mapping):
        raise OptionError(
            f"{where}: expected a mapping of options, got {type(value).__name__}",
            hint=f"write it as {example}",
        )
    return value


def int_option(
    options: Mapping[str, Any], key: str, default: int, lo: int, hi: int | None, where: str
) -> int:
    """An integer option in ``[lo, hi]`` (no upper bound when ``hi`` is None)."""
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionError(
            f"{where}: {key} must be an integer, got {value!r}",
            hint=f"for example {key}: {default}",
        )
    if value < lo or (hi is not None and value > hi):
        span = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise OptionError(
            f"{where}: {key} must be {span}, got {value}", hint=f"use {key}: {default}"
        )
    return value


def bool_option(options: Mapping[str, Any], key: str, default: bool, where: str) -> bool:
    """A true/false option."""
    value = options.get(key, default)
    if not isinstance(value, bool):
        raise OptionError(
            f"{where}: {key} must be true or false, got {value!r}",
            hint=f"use {key}: {'true' if default else 'false'}",
        )
    return value


def number(value: Any, what: str, where: str, hint: str) -> float:
    """A finite real number (a bool is not one), as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise OptionError(f"{where}: {what} must be a finite number, got {value!r}", hint=hint)
    return float(value)
