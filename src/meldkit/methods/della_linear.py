"""Linear DELLA: MagPrune random drop with L1 rescaling, then a weighted sum.

    δ_i = MagPrune(x_i - b; density_i, epsilon_i), L1-rescaled when `rescale`
    out = b + lambda * Σ w_i δ_i   (/ Σ w_i if `normalize`)

Needs 0 < density - epsilon and density + epsilon < 1 (checked at plan time).
Defaults: epsilon 0.15, normalize false, rescale true.

```yaml
merge_method: della_linear
base_model: ./base
models:
  - {model: ./math, parameters: {weight: 0.5, density: 0.4, epsilon: 0.1}}
  - {model: ./code, parameters: {weight: 0.5, density: 0.4, epsilon: 0.1}}
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
    """Merge one tensor with ``della_linear`` (see the module docstring)."""
    return merge_task_vectors(inputs, base_index, shared, per_input, ctx, method="della_linear")
