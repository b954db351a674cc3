"""One point of the search: its place in the search, its genes and the recipe they decode to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Candidate"]


@dataclass(frozen=True)
class Candidate:
    """``index``: the evaluation's number over the whole search (0, 1, ...); ``genes`` in the
    unit cube; ``recipe``: the merge recipe they stand for (a dict in MergeKit's format)."""

    index: int
    generation: int
    genes: tuple[float, ...]
    recipe: dict[str, Any]
