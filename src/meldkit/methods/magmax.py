"""MagMax: per entry, the task-vector value of largest magnitude (Marczak et al., ECCV 2024,
arXiv 2407.06322).

For task vectors ``τ_t = x_t − b``::

    t*(j)  = argmax_t |τ_t[j]|          (the first such model in recipe order on ties)
    out[j] = b[j] + lambda · τ_t*(j)[j]

Element-wise, so every tensor (norms, embeddings, LM heads) is treated alike. The paper has no
per-model weights: scaling a task vector would change which one wins, not only by how much.

```yaml
merge_method: magmax
base_model: ./base
models: [{model: ./math}, {model: ./code}, {model: ./chat}]
parameters: {lambda: 1.0}
```
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from meldkit.methods import spectral
from meldkit.methods.inputs import non_base, param_float
from meldkit.methods.registry import MergeContext

__all__ = ["magmax"]


def magmax(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: MergeContext,
) -> torch.Tensor:
    """Merge one tensor with MagMax (see the module docstring)."""
    assert base_index is not None, "magmax needs a base model"
    base = inputs[base_index].to(spectral.work_dtype(inputs))
    others = non_base(inputs, base_index, per_input)
    if not others:
        return base
    best = others[0].tensor.to(base.dtype) - base  # running pick: one task vector at a time
    for operand in others[1:]:
        tau = operand.tensor.to(base.dtype) - base
        best = torch.where(tau.abs() > best.abs(), tau, best)  # strict: earlier models win ties
    return best.mul_(param_float(shared, "lambda", 1.0)).add_(base)
