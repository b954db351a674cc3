"""TIES: magnitude sparsification, sign election, then a disjoint mean of the agreeing deltas.

    δ_i = top-k(x_i - b) with k = max(1, floor(density_i * N)), v_i = w_i δ_i
    s = sign(Σ v_i) (0 -> +), m_i = [sign(v_i) == s]
    out = b + lambda * Σ m_i v_i / Σ m_i w_i      (normalize defaults to true here)

Defaults: normalize true, rescale false. See :mod:`meldkit.methods.task_vectors`.

```yaml
merge_method: ties
base_model: ./base
models:
  - {model: ./math, parameters: {weight: 0.6, density: 0.5}}
  - {model: ./code, parameters: {weight: 0.4, density: 0.5}}
parameters: {normalize: true}
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
    """Merge one tensor with ``ties`` (see the module docstring)."""
    return merge_task_vectors(inputs, base_index, shared, per_input, ctx, method="ties")
