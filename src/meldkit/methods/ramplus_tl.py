"""RAM+ (tensor-local): RAM with each model's unique part boosted by its overlap ratio.

As :mod:`meldkit.methods.ram` (``active_i = |δ_i| > epsilon``, ``c = Σ active_i``), except
that model ``i``'s unique entries are scaled by ``λ_i``, counted over this tensor only::

    ρ_i = #(active_i ∧ c > 1) / max(#(active_i ∧ c == 1), epsilon)
    λ_i = 1 + r · clamp(ρ_i, 0, alpha)
    out = b + Σ_i λ_i δ_i active_i [c == 1] + (Σ_i δ_i active_i [c > 1]) / max(c, 1)

```yaml
merge_method: ramplus_tl
base_model: ./base
models: [{model: ./agent_a}, {model: ./agent_b}]
parameters: {r: 0.1, alpha: 0.2, epsilon: 1.0e-5}
```
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from meldkit.methods.inputs import non_base, param_float
from meldkit.methods.ram import active_count
from meldkit.methods.registry import MergeContext


def merge(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: MergeContext,
) -> torch.Tensor:
    """Merge one tensor: the base and any number of other models."""
    assert base_index is not None, "ramplus_tl needs a base model"
    base = inputs[base_index]
    others = [o.tensor for o in non_base(inputs, base_index, per_input)]
    if not others:
        return base
    epsilon = param_float(shared, "epsilon", 1e-5)
    r = param_float(shared, "r", 0.1)
    alpha = param_float(shared, "alpha", 0.2)
    count = active_count(base, others, epsilon)
    unique_pos = count == 1
    shared_pos = count > 1
    unique = torch.zeros_like(base)
    overlap = torch.zeros_like(base)
    for x in others:
        delta = x - base
        active = delta.abs() > epsilon
        mine = active & unique_pos
        common = active & shared_pos
        rho = int(common.sum()) / max(int(mine.sum()), epsilon)
        lam = 1 + r * min(max(rho, 0.0), alpha)
        unique.add_(delta * mine, alpha=lam)
        overlap.add_(delta * common)
    return base + unique + overlap.div_(count.clamp_min_(1))
