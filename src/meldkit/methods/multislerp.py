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

from meldkit.methods.inputs import non_base, param_float
from meldkit.methods.registry import MergeContext


def merge(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: MergeContext,
) -> torch.Tensor:
    """Merge one tensor: one or more non-base inputs, base optional."""
    others = non_base(inputs, base_index, per_input)
    if len(others) == 1:
        return others[0].tensor
    base = inputs[base_index] if base_index is not None else None
    eps = param_float(shared, "eps", 1e-8)
    first = others[0].tensor
    # Weights, norms and their sums live in the math dtype as in MergeKit, so that e.g. an
    # antipodal pair cancels to exactly zero (norm + eps rounds to the norm in float32).
    weights = torch.tensor(
        [param_float(o.params, "weight", 1.0) for o in others], dtype=first.dtype, device=first.device
    )
    if shared.get("normalize_weights", True):
        total = weights.sum()
        # The planner refuses a zero sum; keep the raw weights rather than divide by zero.
        if float(total.abs()) >= 1e-12:
            weights = weights / total

    def vector(x: torch.Tensor) -> torch.Tensor:
        return (x - base if base is not None else x).reshape(-1)

    # First pass: m = Σ w_i u_i, one task vector alive at a time.
    norms = []
    mean = torch.zeros_like(first).reshape(-1)
    for i, o in enumerate(others):
        v = vector(o.tensor)
        norm = torch.linalg.vector_norm(v)
        norms.append(norm)
        mean.add_(v / (norm + eps), alpha=float(weights[i]))
    norms_t = torch.stack(norms)  # (n_models,)
    mean_norm = torch.linalg.vector_norm(mean)
    if float(mean_norm) < eps:
        out = torch.zeros_like(mean)
        for i, o in enumerate(others):
            out.add_(vector(o.tensor), alpha=float(weights[i]))
    else:
        direction = mean.div_(mean_norm)  # m̂
        # τ = Σ w_i u_i - (Σ w_i <u_i, m̂>) m̂; second pass for the dot products.
        proj = torch.zeros((), dtype=first.dtype, device=first.device)
        tangent = torch.zeros_like(direction)
        for i, o in enumerate(others):
            u = vector(o.tensor) / (norms_t[i] + eps)
            tangent.add_(u, alpha=float(weights[i]))
            proj += weights[i] * torch.dot(u, direction)
        tangent.sub_(direction * proj)
        tn = float(torch.linalg.vector_norm(tangent))
        sinc = math.sin(tn) / tn if tn > 0 else 1.0
        out = direction.mul_(math.cos(tn)).add_(tangent, alpha=sinc)
        out.mul_((norms_t * weights).sum())
    out = out.reshape(first.shape)
    return out.add_(base) if base is not None else out
