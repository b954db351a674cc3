"""Modifiers: parameters every method with a base accepts, applied around the method's math.

* **LiNeS** (Wang et al., ICLR 2025, arXiv 2410.17146): ``lines_alpha`` and ``lines_beta``
  (or ``lines: {alpha: a, beta: b}``, which the recipe loader expands into them). The merged
  task vector of a tensor at depth ``l`` of ``L`` layers is scaled by
  ``s = alpha + beta * l / (L - 1)``: ``out = base + s * (merged - base)``, once, after the
  method. Tensors outside the layers: embeddings (and other tensors before the stack) at depth
  0, the final norm and the LM head at depth ``L - 1``.
* **Norm matching** (the norm-mismatch problem of DisTaC, arXiv 2508.01148): ``norm_match:
  mean`` (or ``min``, ``max``; ``none`` leaves a tensor out). A pre-pass measures each input's
  whole-model task-vector norm ``n_t = ||theta_t - theta_0||`` over the tensors it applies to;
  the method then receives ``base + c_t * (theta_t - base)`` with ``c_t = target / n_t``, the
  target being the mean (min, max) of the non-zero ``n_t``.

This module is torch-free (the planner reads it); the math is :mod:`.apply`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from meldkit.methods.registry import MethodSpec, ParamSpec

__all__ = [
    "MODIFIER_PARAMS",
    "MODIFIERS_SPEC",
    "NORM_MODES",
    "describe_factors",
    "lines_scale",
    "norm_factors",
    "norm_target",
    "with_modifier_params",
]

#: The target norm choices of ``norm_match`` (``none``: the tensor is left as it is).
NORM_MODES = ("mean", "min", "max", "none")

MODIFIER_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec(
        "lines_alpha",
        "shared",
        doc="LiNeS: scale of the merged task vector at depth 0 (set with lines_beta)",
    ),
    ParamSpec(
        "lines_beta",
        "shared",
        doc="LiNeS: scale added at the last layer, linearly in depth (set with lines_alpha)",
    ),
    ParamSpec(
        "norm_match",
        "shared",
        kind="str",
        doc="rescale every task vector to the mean, min or max whole-model norm before the merge",
    ),
)

# A pseudo-method whose parameters are the modifiers': the planner resolves them with the same
# scopes, gradients, filters and error messages as a method's own parameters.
MODIFIERS_SPEC = MethodSpec(
    name="modifiers",
    pretty_name="Modifiers",
    impl="meldkit.methods.modifiers.apply:apply_lines",  # never loaded as a method
    params=MODIFIER_PARAMS,
)


def with_modifier_params(method: MethodSpec) -> MethodSpec:
    """``method`` with the modifier parameters added (for the recipe's unknown-parameter and
    filter warnings: a modifier's name is never "not used")."""
    own = {p.name for p in method.params}
    return replace(
        method, params=(*method.params, *(p for p in MODIFIER_PARAMS if p.name not in own))
    )


def lines_scale(alpha: float, beta: float, depth: float) -> float:
    """LiNeS' scale at ``depth`` = ``l / (L - 1)`` in [0, 1]: ``alpha + beta * depth``."""
    return alpha + beta * depth


def norm_target(norms: Mapping[str, float], mode: str) -> float | None:
    """The common norm the task vectors are scaled to: the mean, min or max of the non-zero
    ``norms``; None when every task vector is zero (nothing to scale)."""
    values: Sequence[float] = [n for n in norms.values() if n > 0.0]
    if not values:
        return None
    if mode == "min":
        return min(values)
    if mode == "max":
        return max(values)
    return sum(values) / len(values)


def norm_factors(norms: Mapping[str, float], mode: str) -> dict[str, float]:
    """Per input, ``c_t = target / n_t``; 1.0 for a zero task vector (it stays the base)."""
    target = norm_target(norms, mode)
    return {
        key: (target / n if target is not None and n > 0.0 else 1.0) for key, n in norms.items()
    }


def describe_factors(norms: Mapping[str, float], factors: Mapping[str, Any], mode: str) -> str:
    """One line for the run's notes: each input's norm and factor, and the target."""
    target = norm_target(norms, mode)
    parts = ", ".join(f"{k} {norms[k]:.4g} (x{factors[k]:.4g})" for k in norms)
    where = f"the {mode} {target:.4g}" if target is not None else "nothing (all zero)"
    return f"norm_match: task-vector norms {parts}; scaled to {where}"
