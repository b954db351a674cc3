"""NearSwap: take the other model's value where it is close to the base, interpolate elsewhere.

With base ``b``, the other model ``x`` and distance scale ``t``, element-wise::

    ω   = clamp(t / max(|b - x|, 1e-6), 0, 1)
    out = ω · x + (1 - ω) · b

Entries closer than ``t`` are swapped in completely; farther ones move toward ``x`` by
``t / distance``. Planning rule (MergeKit's optional-tensor policy): a tensor present in only
one input is copied only when that input is the base.

```yaml
merge_method: nearswap
base_model: ./base
models: [{model: ./base}, {model: ./tuned}]
parameters: {t: 0.0001}
```
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from meldkit.methods.inputs import base_and_other
from meldkit.methods.registry import MergeContext

MIN_DISTANCE = 1e-6


def nearswap(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: MergeContext,
) -> torch.Tensor:
    """Merge one tensor: the base and exactly one other model."""
    pair = base_and_other(inputs, base_index, "nearswap")
    if pair is None:
        return inputs[0]  # a lone optional tensor: the planner's passthrough policy
    t = float(shared["t"])
    base, other = pair
    # Inputs may arrive as stored (native_inputs): the math is in float32 (float64).
    work = torch.float64 if torch.float64 in (base.dtype, other.dtype) else torch.float32
    base, other = base.to(work), other.to(work)
    distance = (base - other).abs_().clamp_min_(MIN_DISTANCE)
    omega = (t / distance).clamp_(0.0, 1.0)
    del distance
    out = other * omega
    return out.add_(base * (1 - omega))
