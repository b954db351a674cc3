"""The task-vector family's variant table (torch-free): which sparsifier each member uses,
whether it elects signs, and its defaults.

task_arithmetic, ties, dare_ties, dare_linear, breadcrumbs, breadcrumbs_ties, della and
della_linear are one formula (:mod:`meldkit.methods.task_vectors`) with the switches below.
The catalog builds their specs from this table and the math reads it, so the two cannot
drift apart; the fast path (:mod:`meldkit.kernels.task_vectors`) reads it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Sparsifier", "TaskVectorVariant", "TASK_VECTOR_FAMILY"]

# magnitude: keep the top-k |δ| (TIES); random: Bernoulli keep (DARE); magnitude_outliers: drop
# the smallest and the largest |δ| (Breadcrumbs); della_magprune: keep with a probability that
# grows with the |δ| rank within each row (DELLA's MagPrune).
Sparsifier = Literal["magnitude", "random", "magnitude_outliers", "della_magprune"]


@dataclass(frozen=True)
class TaskVectorVariant:
    """One member of the task-vector family (MergeKit's GeneralizedTaskArithmeticMerge)."""

    pretty_name: str
    sparsifier: Sparsifier | None
    consensus: bool
    normalize: bool
    rescale: bool
    reference_url: str
    summary: str


TASK_VECTOR_FAMILY: dict[str, TaskVectorVariant] = {
    "task_arithmetic": TaskVectorVariant(
        "Task Arithmetic",
        None,
        False,
        False,
        False,
        "https://arxiv.org/abs/2212.04089",
        "Adds the weighted task vectors (model - base) to the base.",
    ),
    "ties": TaskVectorVariant(
        "TIES",
        "magnitude",
        True,
        True,
        False,
        "https://arxiv.org/abs/2306.01708",
        "Keeps the largest task-vector entries, elects a sign, averages the agreeing ones.",
    ),
    "dare_ties": TaskVectorVariant(
        "DARE TIES",
        "random",
        True,
        False,
        True,
        "https://arxiv.org/abs/2311.03099",
        "Random drop (DARE) with rescaling, then TIES sign election.",
    ),
    "dare_linear": TaskVectorVariant(
        "Linear DARE",
        "random",
        False,
        False,
        True,
        "https://arxiv.org/abs/2311.03099",
        "Random drop (DARE) with rescaling, then a weighted sum of task vectors.",
    ),
    "breadcrumbs": TaskVectorVariant(
        "Model Breadcrumbs",
        "magnitude_outliers",
        False,
        False,
        False,
        "https://arxiv.org/abs/2312.06795",
        "Drops the smallest and the largest task-vector entries, then sums.",
    ),
    "breadcrumbs_ties": TaskVectorVariant(
        "Model Breadcrumbs with TIES",
        "magnitude_outliers",
        True,
        False,
        False,
        "https://arxiv.org/abs/2312.06795",
        "Breadcrumbs sparsification followed by TIES sign election.",
    ),
    "della": TaskVectorVariant(
        "DELLA",
        "della_magprune",
        True,
        True,
        True,
        "https://arxiv.org/abs/2406.11617",
        "Magnitude-ranked random drop (MagPrune), rescaling and TIES sign election.",
    ),
    "della_linear": TaskVectorVariant(
        "Linear DELLA",
        "della_magprune",
        False,
        False,
        True,
        "https://arxiv.org/abs/2406.11617",
        "Magnitude-ranked random drop (MagPrune) with rescaling, then a weighted sum.",
    ),
}
