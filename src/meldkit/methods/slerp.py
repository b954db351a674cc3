"""SLERP: spherical interpolation between the base ``a`` and the other model ``b``.

Both tensors are treated as single flat vectors::

    â = a/||a||, b̂ = b/||b||          (a norm <= 1e-8 is taken as 1: the vector is left as is)
    d = clamp(<â, b̂>, -1, 1)
    if |d| > 0.9995:  out = (1 - t) a + t b         (colinear or antipodal: plain lerp)
    else:             θ = acos d
                      out = sin((1-t)θ)/sin θ · a + sin(tθ)/sin θ · b

The coefficients multiply the *unnormalised* tensors. ``t = 0`` gives the base.

```yaml
merge_method: slerp
base_model: ./chat
models: [{model: ./chat}, {model: ./code}]
parameters:
  t: [{filter: self_attn, value: [0, 0.5, 1]}, {value: 0.5}]
```
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from meldkit.methods.inputs import base_and_other
from meldkit.methods.registry import MergeContext

DOT_THRESHOLD = 0.9995
NORM_EPS = 1e-8


def slerp(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from ``a`` (t=0) to ``b`` (t=1), MergeKit's conventions."""
    af, bf = a.reshape(-1), b.reshape(-1)
    na = float(torch.linalg.vector_norm(af))
    nb = float(torch.linalg.vector_norm(bf))
    # Dividing the dot product by the norms equals the dot of the normalised copies without
    # materialising them (two tensor-sized temporaries saved).
    na = na if na > NORM_EPS else 1.0
    nb = nb if nb > NORM_EPS else 1.0
    d = float(torch.dot(af, bf)) / (na * nb)
    d = min(1.0, max(-1.0, d))
    if abs(d) > DOT_THRESHOLD:
        return (a * (1.0 - t)).add_(b * t)
    theta = math.acos(d)
    sin_theta = math.sin(theta)
    s0 = math.sin((1.0 - t) * theta) / sin_theta
    s1 = math.sin(t * theta) / sin_theta
    return (a * s0).add_(b, alpha=s1)


def merge(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: MergeContext,
) -> torch.Tensor:
    """Merge one tensor: base plus exactly one other input."""
    pair = base_and_other(inputs, base_index, "slerp")
    if pair is None:
        return inputs[0]  # a lone optional tensor: the planner's passthrough policy
    t = float(shared["t"])
    base, other = pair
    return slerp(t, base, other)
