"""Cross-parameter checks of the built-in methods (torch-free), called by the planner with one
tensor's resolved values: ``check(shared, per_input, base_index) -> list[str]``, one problem
string each. The catalog attaches them to the specs (``MethodSpec.check``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from meldkit.methods.inputs import param_float

__all__ = [
    "check_linear",
    "check_multislerp",
    "check_della",
    "EMBEDDING_RULES",
    "check_spectral",
    "check_wudi",
    "check_consensus",
]

# How the spectral methods treat token embeddings and LM heads: factorised like any matrix,
# or given the non-matrix rule (the mean of the task vectors).
EMBEDDING_RULES = ("matrix", "mean")
WUDI_SOLVERS = ("adam", "closed")
CONSENSUS_BASES = ("task_arithmetic", "ties")


def _non_base(
    per_input: Sequence[Mapping[str, Any]], base_index: int | None
) -> list[tuple[int, Mapping[str, Any]]]:
    return [(i, p) for i, p in enumerate(per_input) if i != base_index]


def check_linear(
    shared: Mapping[str, Any], per_input: Sequence[Mapping[str, Any]], base_index: int | None
) -> list[str]:
    # MergeKit divides by the weight sum unguarded and writes inf/NaN; refuse before any work.
    if not shared.get("normalize", True):
        return []
    if any(p.get("weight") is None for p in per_input):
        return []  # a missing required weight is reported by the planner itself
    total = math.fsum(float(p["weight"]) for p in per_input)
    if abs(total) < 1e-8:
        return [
            f"linear: the weights sum to {total:g}, so normalize: true would divide by zero; "
            "change a weight or set normalize: false"
        ]
    return []


def check_multislerp(
    shared: Mapping[str, Any], per_input: Sequence[Mapping[str, Any]], base_index: int | None
) -> list[str]:
    # MergeKit divides the weights by their sum unguarded (NaN output); one input ignores them.
    others = _non_base(per_input, base_index)
    if len(others) < 2 or not shared.get("normalize_weights", True):
        return []
    if any(p.get("weight") is None for _, p in others):
        return []
    total = math.fsum(float(p["weight"]) for _, p in others)
    if abs(total) < 1e-8:
        return [
            f"multislerp: the weights sum to {total:g}, so normalize_weights: true would divide "
            "by zero; change a weight or set normalize_weights: false"
        ]
    return []


def check_della(
    shared: Mapping[str, Any], per_input: Sequence[Mapping[str, Any]], base_index: int | None
) -> list[str]:
    problems = []
    for i, p in _non_base(per_input, base_index):
        density = param_float(p, "density", 1.0)
        epsilon = param_float(p, "epsilon", 0.15)
        if density >= 1:
            continue  # no pruning happens, so the range does not matter
        if not (0 < density - epsilon and density + epsilon < 1):
            problems.append(
                f"della: input {i} has density={density:g} and epsilon={epsilon:g}; "
                "DELLA needs 0 < density - epsilon and density + epsilon < 1"
            )
    return problems


def _choice(method: str, shared: Mapping[str, Any], name: str, choices: Sequence[str]) -> list[str]:
    value = shared.get(name)
    if value is None or value in choices:
        return []
    return [f"{method}: {name} is {value!r}; choose one of " + ", ".join(choices)]


Check = Callable[[Mapping[str, Any], Sequence[Mapping[str, Any]], int | None], list[str]]


def check_spectral(method: str) -> Check:
    """The check of tsv, iso_c and iso_cts: ``embeddings`` names a known rule."""

    def check(
        shared: Mapping[str, Any], per_input: Sequence[Mapping[str, Any]], base_index: int | None
    ) -> list[str]:
        return _choice(method, shared, "embeddings", EMBEDDING_RULES)

    return check


def check_wudi(
    shared: Mapping[str, Any], per_input: Sequence[Mapping[str, Any]], base_index: int | None
) -> list[str]:
    return _choice("wudi", shared, "embeddings", EMBEDDING_RULES) + _choice(
        "wudi", shared, "solver", WUDI_SOLVERS
    )


def check_consensus(
    shared: Mapping[str, Any], per_input: Sequence[Mapping[str, Any]], base_index: int | None
) -> list[str]:
    return _choice("consensus", shared, "base_method", CONSENSUS_BASES)
