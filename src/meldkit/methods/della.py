"""DELLA: magnitude-ranked random drop (MagPrune), L1 rescaling, TIES sign election.

    per row of x_i - b, with r = ascending |δ| rank in 0..n-1:
        keep with probability p = density - epsilon + 2 epsilon r / (n - 1)
    L1-rescaled when `rescale`; v_i = w_i δ_i; s = sign(Σ v_i); m_i = [sign(v_i) == s]
    out = b + lambda * Σ m_i v_i / Σ m_i w_i      (normalize defaults to true here)

Needs 0 < density - epsilon and density + epsilon < 1 (checked at plan time).
Defaults: epsilon 0.15, normalize true, rescale true.

```yaml
merge_method: della
base_model: ./base
models:
  - {model: ./math, parameters: {weight: 0.6, density: 0.5, epsilon: 0.1}}
  - {model: ./code, parameters: {weight: 0.4, density: 0.5, epsilon: 0.1}}
parameters: {lambda: 1.0}
```
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from meldkit.methods.registry import MergeContext
from meldkit.methods.task_vectors import merge_task_vectors


def merge(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: MergeContext,
) -> torch.Tensor:
    """Merge one tensor with ``della`` (see the module docstring)."""
    return merge_task_vectors(inputs, base_index, shared, per_input, ctx, method="della")
