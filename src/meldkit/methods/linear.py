"""Linear merge: out = sum_i w_i x_i / sum_i w_i (or the plain weighted sum without normalize).

```yaml
merge_method: linear
models:
  - {model: ./a, parameters: {weight: 0.7}}
  - {model: ./b, parameters: {weight: 0.3}}
```
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from meldkit.methods.registry import MergeContext


def linear(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: MergeContext,
) -> torch.Tensor:
    weights = [float(p["weight"]) for p in per_input]
    # Inputs may arrive in their stored dtype (the spec sets native_inputs); adding them into a
    # float32 accumulator converts each element exactly on the fly, saving an upcast pass.
    work = torch.float64 if any(x.dtype == torch.float64 for x in inputs) else torch.float32
    out = torch.zeros(inputs[0].shape, dtype=work, device=inputs[0].device)
    for w, x in zip(weights, inputs):
        out.add_(x, alpha=w)
    if shared.get("normalize", True):
        # MergeKit divides without a guard; a zero sum gives inf/NaN there. We refuse at plan
        # time instead (see docs/compatibility.md), so the division is safe here.
        out.div_(sum(weights))
    return out
