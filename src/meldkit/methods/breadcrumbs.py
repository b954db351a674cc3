"""Model Breadcrumbs: drop the smallest and the largest task-vector entries, then sum.

    target = floor(density*N), n_top = floor(gamma*N), n_bot = max(0, N - target - n_top)
    δ_i keeps the entries of ascending |x_i - b| rank [n_bot, n_bot + target)
    out = b + lambda * Σ w_i δ_i   (/ Σ w_i if `normalize`)

Defaults: gamma 0.01, normalize false, rescale false.

```yaml
merge_method: breadcrumbs
base_model: ./base
models:
  - {model: ./math, parameters: {weight: 0.5, density: 0.9, gamma: 0.01}}
  - {model: ./code, parameters: {weight: 0.5, density: 0.9, gamma: 0.01}}
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
    """Merge one tensor with ``breadcrumbs`` (see the module docstring)."""
    return merge_task_vectors(inputs, base_index, shared, per_input, ctx, method="breadcrumbs")
