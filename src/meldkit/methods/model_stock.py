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

from meldkit.methods.inputs import non_base
from meldkit.methods.registry import MergeContext


def _rows(x: torch.Tensor, filter_wise: bool) -> torch.Tensor:
    """(rows, length) view: one row per interpolation ratio."""
    if not filter_wise or x.dim() <= 1:
        return x.reshape(1, -1)
    return x.reshape(x.shape[0], -1)


def merge(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: MergeContext,
) -> torch.Tensor:
    """Merge one tensor: the base and at least two other models."""
    assert base_index is not None, "model_stock needs a base model"
    base = inputs[base_index]
    others = [o.tensor for o in non_base(inputs, base_index, per_input)]
    n = len(others)
    if n == 0:
        return base
    filter_wise = bool(shared.get("filter_wise", False))

    # The pairwise cosines need every offset at once; keep them as (rows, length) views.
    offsets = [_rows(x - base, filter_wise) for x in others]
    norms = [torch.linalg.vector_norm(d, dim=-1) for d in offsets]  # (rows,) each
    cos_sum = torch.zeros_like(norms[0])
    pairs = 0
    for i in range(n):
        for j in range(i + 1, n):
            dot = (offsets[i] * offsets[j]).sum(dim=-1)
            cos_sum += (dot / (norms[i] * norms[j]).clamp_min(1e-6)).clamp(-1.0, 1.0)
            pairs += 1
    del offsets
    cos = cos_sum / max(pairs, 1)  # (rows,)
    denom = 1 + (n - 1) * cos
    singular = denom.abs() < 1e-6
    t = torch.where(singular, torch.zeros_like(cos), n * cos / torch.where(singular, 1.0, denom))

    mean = others[0].clone()
    for x in others[1:]:
        mean.add_(x)
    mean.div_(n)
    # (rows, 1) ratios broadcast over each row of the (rows, length) view.
    t_rows = t.reshape(-1, 1)
    out = _rows(mean, filter_wise).mul_(t_rows)
    out.add_(_rows(base, filter_wise) * (1 - t_rows))
    return out.reshape(base.shape)
