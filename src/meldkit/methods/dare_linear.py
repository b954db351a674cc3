"""DARE (linear): random drop with L1 rescaling, then a weighted sum of task vectors.

    δ_i = x_i - b with each element kept with probability density_i, L1-rescaled if `rescale`
    out = b + lambda * Σ w_i δ_i   (/ Σ w_i if `normalize`)

Defaults: normalize false, rescale true. Random: seeded by (seed, tensor name, input index).

```yaml
merge_method: dare_linear
base_model: ./base
models:
  - {model: ./math, parameters: {weight: 0.5, density: 0.5}}
  - {model: ./code, parameters: {weight: 0.5, density: 0.5}}
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
    """Merge one tensor with ``dare_linear`` (see the module docstring)."""
    return merge_task_vectors(inputs, base_index, shared, per_input, ctx, method="dare_linear")
