"""Karcher mean: the Riemannian mean of the inputs' directions, scaled by their mean norm.

Every input (a given base included, as in MergeKit) has weight ``α_i = 1/N``; each tensor is
one flat vector. With ``n_i = ||x_i||`` and ``u_i = x_i / n_i``, inputs with ``n_i <= tol`` are
dropped and the others get ``α̂_i = α_i / Σ α`` (over the kept ones)::

    m = normalise(Σ α̂_i u_i)         (u of the first kept input if that norm is < tol)
    repeat max_iter times:
        T = Σ α̂_i θ_i / sin θ_i · (u_i - cos θ_i · m),  θ_i = acos(clamp(<u_i, m>, -1, 1)),
            skipping inputs with θ_i < tol
        stop if ||T|| < tol
        m = normalise(cos||T|| · m + sin||T|| · T / ||T||)
    out = (Σ_i α_i n_i) · m            (zeros when every norm is <= tol)

A single input is returned as is. The unit vectors are never stored: ``u_i = x_i / n_i`` is
folded into each coefficient, so memory stays at two tensors besides the inputs.

```yaml
merge_method: karcher
models: [{model: ./a}, {model: ./b}, {model: ./c}]
parameters: {max_iter: 10, tol: 1.0e-5}
```
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from meldkit.methods.inputs import param_float
from meldkit.methods.registry import MergeContext


def karcher_mean(
    tensors: Sequence[torch.Tensor], max_iter: int = 10, tol: float = 1e-5
) -> torch.Tensor:
    """Karcher mean of ``tensors`` with uniform weights (see the module docstring)."""
    if len(tensors) == 1:
        return tensors[0]
    alpha = 1.0 / len(tensors)
    norms = [float(torch.linalg.vector_norm(x)) for x in tensors]
    kept = [(x.reshape(-1), n) for x, n in zip(tensors, norms, strict=True) if n > tol]
    if not kept:
        return torch.zeros_like(tensors[0])
    a_hat = 1.0 / len(kept)  # uniform α renormalised over the kept inputs

    mean = torch.zeros_like(kept[0][0])
    for x, n in kept:
        mean.add_(x, alpha=a_hat / n)
    mean_norm = float(torch.linalg.vector_norm(mean))
    if mean_norm < tol:
        x0, n0 = kept[0]
        mean = x0 / n0
    else:
        mean.div_(mean_norm)

    tangent = torch.empty_like(mean)
    for _ in range(max(0, int(max_iter))):
        tangent.zero_()
        for x, n in kept:
            cos = min(1.0, max(-1.0, float(torch.dot(x, mean)) / n))
            theta = math.acos(cos)
            if theta < tol:
                continue
            scale = a_hat * theta / math.sin(theta)
            # scale · (u_i - cos · m) with u_i = x / n
            tangent.add_(x, alpha=scale / n).add_(mean, alpha=-scale * cos)
        t_norm = float(torch.linalg.vector_norm(tangent))
        if t_norm < tol:
            break
        mean.mul_(math.cos(t_norm)).add_(tangent, alpha=math.sin(t_norm) / t_norm)
        mean.div_(float(torch.linalg.vector_norm(mean)))
    scale = sum(alpha * n for n in norms)
    return mean.mul_(scale).reshape(tensors[0].shape)


def merge(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: MergeContext,
) -> torch.Tensor:
    """Merge one tensor: every input, the base included, counts equally."""
    max_iter = int(shared.get("max_iter", 10) if shared.get("max_iter") is not None else 10)
    tol = param_float(shared, "tol", 1e-5)
    return karcher_mean(inputs, max_iter=max_iter, tol=tol)
