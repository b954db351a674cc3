"""Model Stock: move from the base toward the models' mean by a ratio set by their angle.

With ``N >= 2`` non-base models and offsets ``δ_i = x_i - b`` (flattened; with
``filter_wise`` each row separately, a 1-D tensor being one row)::

    cos θ = mean over pairs i<j of clamp(<δ_i, δ_j> / max(||δ_i|| ||δ_j||, 1e-6), -1, 1)
    t     = N cos θ / (1 + (N - 1) cos θ)          (t = 0 when |1 + (N-1) cos θ| < 1e-6)
    out   = t · mean_i(x_i) + (1 - t) · b

No user weights. Planning rule (MergeKit's optional-tensor policy): a tensor with fewer than 3
inputs is copied when only the base has it and skipped otherwise.

```yaml
merge_method: model_stock
base_model: ./base
models: [{model: ./ft1}, {model: ./ft2}, {model: ./ft3}]
parameters: {filter_wise: false}
```
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from meldkit.methods import combination
from meldkit.methods.combination import TORCH, Passes
from meldkit.methods.inputs import non_base, output_dtype
from meldkit.methods.registry import MergeContext


def model_stock(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: MergeContext,
    passes: Passes = TORCH,
) -> torch.Tensor:
    """Merge one tensor: the base and at least two other models.

    The cosines come from the offsets' Gram matrix (one blocked pass, float64, per row with
    ``filter_wise``); the output ``t·mean + (1-t)·base`` is written in a second pass."""
    assert base_index is not None, "model_stock needs a base model"
    others = non_base(inputs, base_index, per_input)
    n = len(others)
    if n == 0:
        return inputs[base_index]
    filter_wise = bool(shared.get("filter_wise", False))
    base = inputs[base_index]
    rows = base.shape[0] if filter_wise and base.dim() > 1 else 1

    mix = combination.differences(len(inputs), [(o.index, base_index) for o in others])
    g = passes.gram(inputs, mix, rows)  # (rows, n, n): <x_i - b, x_j - b>
    norms = g.diagonal(dim1=1, dim2=2).clamp_min(0).sqrt()  # (rows, n)
    cos_sum = torch.zeros(rows, dtype=torch.float64)
    pairs = 0
    for i in range(n):
        for j in range(i + 1, n):
            cos_sum += (g[:, i, j] / (norms[:, i] * norms[:, j]).clamp_min(1e-6)).clamp(-1.0, 1.0)
            pairs += 1
    cos = cos_sum / max(pairs, 1)
    denom = 1 + (n - 1) * cos
    singular = denom.abs() < 1e-6
    t = torch.where(singular, torch.zeros_like(cos), n * cos / torch.where(singular, 1.0, denom))

    coeffs = torch.zeros(rows, len(inputs), dtype=torch.float64)  # t·mean + (1-t)·base
    for o in others:
        coeffs[:, o.index] = t / n
    coeffs[:, base_index] = 1 - t
    return passes.combine(inputs, coeffs, output_dtype(inputs, ctx.out_dtype))
