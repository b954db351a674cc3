"""Fitness of candidate merges for ``meldkit evolve``: TinyTasks, perplexity, a user's Python
function and lm-eval tasks, summed by weight (higher is better).

``parse_fitness(entries, base_dir=...)`` reads a search file's ``fitness:`` list; the
:class:`Fitness` it returns is called on a loaded causal LM and its tokenizer and returns every
term's values plus ``"fitness"``. Importing this package does not import torch.
"""

from __future__ import annotations

from meldkit.evolve.fitness.base import FITNESS_KEY, Fitness, FitnessTerm
from meldkit.evolve.fitness.lm_eval_tasks import (
    LmEvalFitness,
    LmEvalTask,
    fitness_from_mergekit_tasks,
)
from meldkit.evolve.fitness.parse import FITNESS_KINDS, parse_fitness
from meldkit.evolve.fitness.perplexity import PerplexityFitness
from meldkit.evolve.fitness.python_function import PythonFitness
from meldkit.evolve.fitness.tinytasks import TinyTasksFitness, evaluate_tinytasks

__all__ = [
    "FITNESS_KEY",
    "FITNESS_KINDS",
    "Fitness",
    "FitnessTerm",
    "LmEvalFitness",
    "LmEvalTask",
    "PerplexityFitness",
    "PythonFitness",
    "TinyTasksFitness",
    "evaluate_tinytasks",
    "fitness_from_mergekit_tasks",
    "parse_fitness",
]
