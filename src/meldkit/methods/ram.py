"""RAM (Reinforced Agent Merging): keep unique task-vector entries, average shared ones.

With task vectors ``δ_i = x_i - b``, ``active_i = |δ_i| > epsilon`` and the per-element count
``c = Σ_i active_i``::

    out = b + Σ_i δ_i active_i [c == 1] + (Σ_i δ_i active_i [c > 1]) / max(c, 1)

Entries at or below ``epsilon`` are dropped. Because a unique entry (c == 1) is its own sum,
both parts are one running sum divided by ``max(c, 1)``: two passes over the models, no
``(N, ...)`` stack.

```yaml
merge_method: ram
base_model: ./base
models: [{model: ./agent_a}, {model: ./agent_b}]
parameters: {epsilon: 1.0e-5}
```
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from meldkit.methods.inputs import non_base, param_float
from meldkit.methods.registry import MergeContext


def active_count(
    base: torch.Tensor, others: Sequence[torch.Tensor], epsilon: float
) -> torch.Tensor:
    """``c``: how many models' task vectors exceed ``epsilon`` in magnitude, per element."""
    count = torch.zeros_like(base)
    for x in others:
        count.add_((x - base).abs_() > epsilon)
    return count


def ram(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: MergeContext,
) -> torch.Tensor:
    """Merge one tensor: the base and any number of other models."""
    assert base_index is not None, "ram needs a base model"
    base = inputs[base_index]
    others = [o.tensor for o in non_base(inputs, base_index, per_input)]
    if not others:
        return base
    epsilon = param_float(shared, "epsilon", 1e-5)
    # Inputs may arrive as stored (native_inputs): `x - base` with a float32 base widens x exactly.
    base = base.to(
        torch.float64 if any(x.dtype == torch.float64 for x in inputs) else torch.float32
    )
    count = active_count(base, others, epsilon)
    total = torch.zeros_like(base)
    for x in others:
        delta = x - base
        total.add_(delta * (delta.abs() > epsilon))
    return base + total.div_(count.clamp_min_(1))
