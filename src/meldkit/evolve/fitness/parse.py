"""The search file's ``fitness:`` list to a :class:`~meldkit.evolve.fitness.base.Fitness`.

Each entry names one kind by its only key besides ``weight`` (default 1.0)::

    fitness:
      - tinytasks: {n: 64, split: search}
      - perplexity: {file: wiki.txt, max_tokens: 4096, context: 512}
        weight: 0.1
      - python: evals/score.py:score
      - lm_eval: {tasks: [arc_easy], limit: 100}

Importing and parsing never imports torch (the CLI's help imports this module).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from meldkit.errors import OptionError, did_you_mean
from meldkit.evolve.fitness.base import Fitness, FitnessTerm, number
from meldkit.evolve.fitness.lm_eval_tasks import parse_lm_eval
from meldkit.evolve.fitness.perplexity import parse_perplexity
from meldkit.evolve.fitness.python_function import parse_python
from meldkit.evolve.fitness.tinytasks import parse_tinytasks

__all__ = ["FITNESS_KINDS", "parse_fitness"]

_Parser = Callable[[Any, float, str, Path], FitnessTerm]

#: Every kind of fitness entry and the function that reads its options.
FITNESS_KINDS: dict[str, _Parser] = {
    "lm_eval": parse_lm_eval,
    "perplexity": parse_perplexity,
    "python": parse_python,
    "tinytasks": parse_tinytasks,
}
_KINDS_HINT = (
    "each entry is one of "
    + ", ".join(f"{{{k}: ...}}" for k in FITNESS_KINDS)
    + ", with an optional weight"
)


def parse_fitness(entries: Any, *, base_dir: Path) -> Fitness:
    """The fitness a search file's ``fitness:`` list (already YAML-loaded) describes.

    Relative paths resolve against ``base_dir`` (the search file's folder). Every bad entry
    raises :class:`~meldkit.errors.OptionError` naming its position (``"fitness[1]: ..."``)
    with a hint.
    """
    if isinstance(entries, Mapping):
        entries = [entries]  # one entry written without the list dash
    if not isinstance(entries, list) or not entries:
        raise OptionError(
            f"fitness must be a non-empty list of entries, got {entries!r}", hint=_KINDS_HINT
        )
    terms: list[FitnessTerm] = []
    for i, entry in enumerate(entries):
        term = _parse_entry(entry, f"fitness[{i}]", base_dir)
        clash = next((j for j, t in enumerate(terms) if t.name == term.name), None)
        if clash is not None:
            raise OptionError(
                f"fitness[{i}]: scores {term.name!r} again (as fitness[{clash}] does)",
                hint="give each objective once; weight it instead of repeating it",
            )
        terms.append(term)
    return Fitness(terms)


def _parse_entry(entry: Any, where: str, base_dir: Path) -> FitnessTerm:
    if not isinstance(entry, Mapping):
        raise OptionError(
            f"{where}: expected a mapping such as {{tinytasks: {{n: 64}}}}, got {entry!r}",
            hint=_KINDS_HINT,
        )
    kinds = [k for k in entry if k != "weight"]
    if not kinds:
        raise OptionError(f"{where}: names no fitness kind", hint=_KINDS_HINT)
    if len(kinds) > 1:
        known = [k for k in kinds if k in FITNESS_KINDS]
        unknown = [k for k in kinds if k not in FITNESS_KINDS]
        if len(known) == 1 and unknown:
            # Most likely an option written beside the kind instead of inside it.
            raise OptionError(
                f"{where}: unknown key {unknown[0]!r} beside {known[0]!r}",
                hint=f"an entry holds one kind and weight; put {known[0]}'s options under it: {{{known[0]}: {{{unknown[0]}: ...}}}}",
            )
        raise OptionError(
            f"{where}: one kind per entry, got {', '.join(map(repr, kinds))}",
            hint="write each kind as its own entry",
        )
    kind = kinds[0]
    if kind not in FITNESS_KINDS:
        raise OptionError(
            f"{where}: unknown fitness kind {kind!r}.{did_you_mean(str(kind), FITNESS_KINDS)}",
            hint=_KINDS_HINT,
        )
    weight = number(entry.get("weight", 1.0), "weight", where, "for example weight: 0.5")
    return FITNESS_KINDS[kind](entry[kind], weight, f"{where}: {kind}", base_dir)
