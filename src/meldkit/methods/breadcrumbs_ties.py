"""Model Breadcrumbs with TIES sign election.

    δ_i = breadcrumbs window of x_i - b (see breadcrumbs), v_i = w_i δ_i
    s = sign(Σ v_i) (0 -> +), m_i = [sign(v_i) == s]
    out = b + lambda * Σ m_i v_i   (/ Σ m_i w_i if `normalize`)

Defaults: gamma 0.01, normalize false, rescale false.

```yaml
merge_method: breadcrumbs_ties
base_model: ./base
models:
  - {model: ./math, parameters: {weight: 0.5, density: 0.9, gamma: 0.02}}
  - {model: ./code, parameters: {weight: 0.5, density: 0.9, gamma: 0.02}}
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
    """Merge one tensor with ``breadcrumbs_ties`` (see the module docstring)."""
    return merge_task_vectors(inputs, base_index, shared, per_input, ctx, method="breadcrumbs_ties")
