"""Multi-SLERP: weighted spherical mean of any number of models (one tangent-space step).

With the non-base models ``x_i`` (``v_i = x_i - b`` when there is a base, else ``v_i = x_i``),
weights ``w_i`` (divided by their sum when ``normalize_weights``) and each tensor flattened::

    u_i = v_i / (||v_i|| + eps)
    m   = Σ w_i u_i
    if ||m|| < eps:  out = Σ w_i v_i (+ b)                       (linear fallback)
    m̂   = m / ||m||
    τ   = Σ w_i (u_i - <u_i, m̂> m̂)                               (tangent mean)
    out = (m̂ cos||τ|| + τ sin||τ||/||τ||) · Σ w_i ||v_i||  (+ b)

A single non-base model is returned as is. Note ``τ = m - <m, m̂> m̂`` vanishes up to rounding,
so the step is a projection of the weighted mean onto the sphere scaled by the mean norm; we
evaluate the formula anyway (with ``sin x / x -> 1`` at 0) to stay within rounding of MergeKit.

Deliberate differences (docs/compatibility.md): MergeKit raises when ``||m|| < eps`` with three
or more models (antipodal or all-zero task vectors, e.g. every model equal to the base) and
produces NaN when ``τ`` is exactly zero (identical inputs); we use the linear fallback for any
count and the ``sin x / x`` limit.

```yaml
merge_method: multislerp
base_model: ./base
models:
  - {model: ./a, parameters: {weight: 1}}
  - {model: ./b, parameters: {weight: 1}}
  - {model: ./c, parameters: {weight: 2}}
```
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from meldkit.methods import combination
from meldkit.methods.combination import TORCH, Passes
from meldkit.methods.inputs import non_base, output_dtype, param_float
from meldkit.methods.registry import MergeContext


def multislerp(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: MergeContext,
    passes: Passes = TORCH,
) -> torch.Tensor:
    """Merge one tensor: one or more non-base inputs, base optional.

    Every step works in the span of the task vectors ``v_i``: one blocked pass computes their
    Gram matrix ``G`` (float64), the formula runs on coefficients (``<a, b> = aᵀ G b``), and a
    second pass writes ``base + Σ c_i v_i`` (:mod:`meldkit.methods.combination`)."""
    others = non_base(inputs, base_index, per_input)
    if len(others) == 1:
        return others[0].tensor
    eps = param_float(shared, "eps", 1e-8)
    weights = torch.tensor(
        [param_float(o.params, "weight", 1.0) for o in others], dtype=torch.float64
    )
    if shared.get("normalize_weights", True):
        total = weights.sum()
        # The planner refuses a zero sum; keep the raw weights rather than divide by zero.
        if float(total.abs()) >= 1e-12:
            weights = weights / total
    pairs = [(o.index, base_index) for o in others]
    mix = combination.differences(len(inputs), pairs)  # v_i = x_i - base (or x_i)
    g = passes.gram(inputs, mix)[0]  # (K, K)
    norms = g.diagonal().clamp_min(0).sqrt()

    def norm(c: torch.Tensor) -> float:
        return math.sqrt(max(0.0, float(c @ g @ c)))

    a = weights / (norms + eps)  # m = Σ w_i u_i with u_i = v_i / (|v_i| + eps)
    mean_norm = norm(a)
    if mean_norm < eps:
        coeffs = weights  # antipodal inputs: the weighted sum of task vectors
    else:
        direction = a / mean_norm  # m̂
        # τ = Σ w_i u_i - (Σ w_i <u_i, m̂>) m̂
        proj = float((weights / (norms + eps)) @ (g @ direction))
        tangent = a - proj * direction
        tn = norm(tangent)
        sinc = math.sin(tn) / tn if tn > 0 else 1.0
        coeffs = (math.cos(tn) * direction + sinc * tangent) * float((norms * weights).sum())
    in_coeffs = coeffs @ mix  # over the inputs: Σ c_i (x_i - base) ...
    if base_index is not None:
        in_coeffs[base_index] += 1.0  # ... + base
    return passes.combine(inputs, in_coeffs, output_dtype(inputs, ctx.out_dtype))
