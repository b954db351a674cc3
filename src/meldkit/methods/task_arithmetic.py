"""Task arithmetic: out = b + lambda * Σ_i w_i (x_i - b)   (divided by Σ_i w_i if `normalize`).

No sparsification and no sign election; `density` is accepted and unused, as in MergeKit.
Defaults: normalize false, rescale false, lambda 1. See :mod:`meldkit.methods.task_vectors`.

```yaml
merge_method: task_arithmetic
base_model: ./base
models:
  - {model: ./math, parameters: {weight: 1.0}}
  - {model: ./code, parameters: {weight: 0.5}}
parameters: {lambda: 0.8}
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
    """Merge one tensor with ``task_arithmetic`` (see the module docstring)."""
    return merge_task_vectors(inputs, base_index, shared, per_input, ctx, method="task_arithmetic")
