"""DARE-TIES: random drop with L1 rescaling, then TIES sign election.

    δ_i = x_i - b with each element kept with probability density_i, then scaled by
          ||x_i - b||_1 / ||kept||_1 (whole tensor) when `rescale`
    v_i = w_i δ_i, s = sign(Σ v_i) (0 -> +), m_i = [sign(v_i) == s]
    out = b + lambda * Σ m_i v_i   (/ Σ m_i w_i if `normalize`)

Defaults: normalize false, rescale true. Random: seeded by (seed, tensor name, input index).

```yaml
merge_method: dare_ties
base_model: ./base
models:
  - {model: ./math, parameters: {weight: 0.6, density: 0.7}}
  - {model: ./code, parameters: {weight: 0.4, density: 0.7}}
parameters: {int8_mask: true}
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
    """Merge one tensor with ``dare_ties`` (see the module docstring)."""
    return merge_task_vectors(inputs, base_index, shared, per_input, ctx, method="dare_ties")
