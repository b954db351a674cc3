"""NuSLERP: weighted SLERP between two models, optionally of their task vectors, optionally per row.

With the two non-base models' weights ``w1, w2``::

    t = w2 / (w1 + w2)          (0.5 when |w1 + w2| < 1e-6)
    with a base b:   out = b + S(t, x1 - b, x2 - b)
    without:         out = S(t, x1, x2)

``S`` interpolates vectors: the whole tensor is one vector with ``nuslerp_flatten`` (the
default); otherwise each slice along the last axis is one vector (``nuslerp_row_wise``: along
the first axis). For each vector pair, ``u = v / max(||v||, 1e-7)``, ``c = <u0, u1>``,
``θ = acos(clamp(c, -1, 1))`` and::

    S = (sin((1-t)θ) v0 + sin(tθ) v1) / sin θ,   or (1-t) v0 + t v1 when 1 - c² <= (1e-8)²

```yaml
merge_method: nuslerp
base_model: ./base
models:
  - {model: ./math, parameters: {weight: 0.3}}
  - {model: ./code, parameters: {weight: 0.7}}
parameters: {nuslerp_flatten: false, nuslerp_row_wise: false}
```
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from meldkit.methods import combination
from meldkit.methods.combination import TORCH, Passes
from meldkit.methods.inputs import non_base, output_dtype, param_float
from meldkit.methods.registry import MergeContext

NORM_CLAMP = 1e-7
COLINEAR_EPS = 1e-8


def _as_vectors(x: torch.Tensor, flatten: bool, row_wise: bool) -> torch.Tensor:
    """(n_vectors, length) view: what S interpolates, one vector per row."""
    if flatten or x.dim() <= 1:
        return x.reshape(1, -1)
    if row_wise:
        # Vectors run along the first axis: (d0, d1, ...) -> (d1*..., d0).
        return x.movedim(0, -1).reshape(-1, x.shape[0])
    return x.reshape(-1, x.shape[-1])


def _from_vectors(
    v: torch.Tensor, like: torch.Tensor, flatten: bool, row_wise: bool
) -> torch.Tensor:
    if flatten or like.dim() <= 1 or not row_wise:
        return v.reshape(like.shape)
    return v.reshape(like.movedim(0, -1).shape).movedim(-1, 0)


def spherical_interpolate(
    t: float, v0: torch.Tensor, v1: torch.Tensor, *, flatten: bool = True, row_wise: bool = False
) -> torch.Tensor:
    """``S(t, v0, v1)``: per-vector SLERP with a lerp fallback for (anti)colinear pairs."""
    a = _as_vectors(v0, flatten, row_wise)  # (n_vectors, length)
    b = _as_vectors(v1, flatten, row_wise)
    aa, bb, ab = (a * a).sum(dim=-1), (b * b).sum(dim=-1), (a * b).sum(dim=-1)
    g = torch.stack([torch.stack([aa, ab], dim=-1), torch.stack([ab, bb], dim=-1)], dim=-2)
    c0, c1 = _slerp_coefficients(g, t)
    out = a * c0.unsqueeze(-1)
    out.addcmul_(b, c1.unsqueeze(-1))
    return _from_vectors(out, v0, flatten, row_wise)


def _slerp_coefficients(g: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per vector pair, ``(c0, c1)`` with ``S = c0 v0 + c1 v1``, from the pairs' Gram matrices
    ``g`` (rows, 2, 2): the formula of :func:`spherical_interpolate` on scalars."""
    na = g[:, 0, 0].clamp_min(0).sqrt().clamp_min(NORM_CLAMP)
    nb = g[:, 1, 1].clamp_min(0).sqrt().clamp_min(NORM_CLAMP)
    cos = (g[:, 0, 1] / (na * nb)).clamp(-1.0, 1.0)
    theta = torch.acos(cos)
    sin_theta = torch.sin(theta)
    colinear = (1 - cos * cos) <= COLINEAR_EPS**2
    safe_sin = torch.where(colinear, torch.ones_like(sin_theta), sin_theta)
    c0 = torch.where(
        colinear, torch.full_like(cos, 1.0 - t), torch.sin((1.0 - t) * theta) / safe_sin
    )
    c1 = torch.where(colinear, torch.full_like(cos, t), torch.sin(t * theta) / safe_sin)
    return c0, c1


def nuslerp(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: MergeContext,
    passes: Passes = TORCH,
) -> torch.Tensor:
    """Merge one tensor: exactly two non-base inputs, base optional.

    Whole-tensor and last-axis vectors go through :mod:`meldkit.methods.combination` (a Gram
    pass and a combination pass over the inputs as stored); first-axis vectors
    (``nuslerp_row_wise``) are interpolated on full float32 copies."""
    if len(inputs) == 1:
        return inputs[0]  # a lone optional tensor: the planner's passthrough policy
    first, second = non_base(inputs, base_index, per_input)
    w1 = param_float(first.params, "weight", 1.0)
    w2 = param_float(second.params, "weight", 1.0)
    t = 0.5 if abs(w1 + w2) < 1e-6 else w2 / (w1 + w2)
    flatten = bool(shared.get("nuslerp_flatten", True))
    row_wise = bool(shared.get("nuslerp_row_wise", False))
    shape = inputs[0].shape
    if flatten or len(shape) <= 1 or not row_wise:
        rows = 1 if flatten or len(shape) <= 1 else inputs[0].numel() // shape[-1]
        mix = combination.differences(
            len(inputs), [(first.index, base_index), (second.index, base_index)]
        )
        c0, c1 = _slerp_coefficients(passes.gram(inputs, mix, rows), t)
        coeffs = torch.stack([c0, c1], dim=1) @ mix  # (rows, inputs)
        if base_index is not None:
            coeffs[:, base_index] += 1.0
        return passes.combine(inputs, coeffs, output_dtype(inputs, ctx.out_dtype))
    work = torch.float64 if any(x.dtype == torch.float64 for x in inputs) else torch.float32
    a, b = first.tensor.to(work), second.tensor.to(work)
    if base_index is None:
        return spherical_interpolate(t, a, b, flatten=flatten, row_wise=row_wise)
    base = inputs[base_index].to(work)
    return spherical_interpolate(t, a - base, b - base, flatten=flatten, row_wise=row_wise).add_(
        base
    )
