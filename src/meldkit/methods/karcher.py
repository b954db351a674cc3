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

A single input is returned as is. The mean always lies in the span of the inputs, so it is
computed as coefficients from the inputs' Gram matrix (one blocked pass, float64) and written
in a second pass: memory stays at the inputs as stored plus the output.

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

from meldkit.methods.combination import TORCH, Passes
from meldkit.methods.inputs import output_dtype, param_float
from meldkit.methods.registry import MergeContext


def karcher_coefficients(g: torch.Tensor, max_iter: int = 10, tol: float = 1e-5) -> torch.Tensor:
    """Coefficients ``c`` with ``Σ c_i x_i`` = the Karcher mean of inputs with Gram matrix ``g``
    (float64, K x K; uniform weights, see the module docstring).

    The mean stays in the span of the inputs, so each iteration is a few K x K products:
    ``<x_i, m> = (G c)_i`` and ``||Σ d_i x_i||² = dᵀ G d``."""
    k = g.shape[0]
    alpha = 1.0 / k
    norms = [math.sqrt(max(0.0, float(g[i, i]))) for i in range(k)]
    kept = [i for i in range(k) if norms[i] > tol]
    if not kept:
        return torch.zeros(k, dtype=torch.float64)
    a_hat = 1.0 / len(kept)  # uniform α renormalised over the kept inputs

    def norm(c: torch.Tensor) -> float:
        return math.sqrt(max(0.0, float(c @ g @ c)))

    mean = torch.zeros(k, dtype=torch.float64)
    for i in kept:
        mean[i] += a_hat / norms[i]
    mean_norm = norm(mean)
    if mean_norm < tol:
        mean.zero_()
        mean[kept[0]] = 1.0 / norms[kept[0]]
    else:
        mean /= mean_norm

    for _ in range(max(0, int(max_iter))):
        dots = g @ mean  # <x_i, m>
        tangent = torch.zeros(k, dtype=torch.float64)
        for i in kept:
            cos = min(1.0, max(-1.0, float(dots[i]) / norms[i]))
            theta = math.acos(cos)
            # θ ≈ π: u_i ≈ -m, where u_i - cos·m vanishes exactly and θ / sin θ overflows; an
            # elementwise evaluation gets 0 · huge = 0 there. In coefficients the zero is only
            # reached up to rounding (times ~1e16), so such an input is skipped, as at θ ≈ 0.
            if theta < tol or math.pi - theta < tol:
                continue
            scale = a_hat * theta / math.sin(theta)
            # scale · (u_i - cos · m) with u_i = x_i / n_i
            tangent[i] += scale / norms[i]
            tangent -= scale * cos * mean
        t_norm = norm(tangent)
        if t_norm < tol:
            break
        stepped = math.cos(t_norm) * mean + (math.sin(t_norm) / t_norm) * tangent
        stepped_norm = norm(stepped)
        if stepped_norm < tol:
            break
        mean = stepped / stepped_norm
    return mean * sum(alpha * n for n in norms)


def karcher_mean(
    tensors: Sequence[torch.Tensor],
    max_iter: int = 10,
    tol: float = 1e-5,
    out_dtype: str | None = None,
    passes: Passes = TORCH,
) -> torch.Tensor:
    """Karcher mean of ``tensors`` with uniform weights: a Gram pass, the iteration on K x K
    matrices, and a combination pass (:mod:`meldkit.methods.combination`)."""
    if len(tensors) == 1:
        return tensors[0]
    coeffs = karcher_coefficients(passes.gram(tensors)[0], max_iter, tol)
    return passes.combine(tensors, coeffs, output_dtype(tensors, out_dtype))


def karcher(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: MergeContext,
    passes: Passes = TORCH,
) -> torch.Tensor:
    """Merge one tensor: every input, the base included, counts equally."""
    max_iter = int(shared.get("max_iter", 10) if shared.get("max_iter") is not None else 10)
    tol = param_float(shared, "tol", 1e-5)
    return karcher_mean(inputs, max_iter=max_iter, tol=tol, out_dtype=ctx.out_dtype, passes=passes)
