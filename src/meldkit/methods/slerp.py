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

from meldkit.methods.combination import TORCH, Passes
from meldkit.methods.inputs import base_and_other, output_dtype
from meldkit.methods.registry import MergeContext

DOT_THRESHOLD = 0.9995
NORM_EPS = 1e-8


def _coefficients(t: float, sq_a: float, sq_b: float, dot: float) -> tuple[float, float]:
    """``(s0, s1)`` with ``out = s0 a + s1 b``, from ``||a||²``, ``||b||²`` and ``<a, b>``."""
    na, nb = math.sqrt(max(0.0, sq_a)), math.sqrt(max(0.0, sq_b))
    # Dividing the dot product by the norms equals the dot of the normalised copies without
    # materialising them.
    na = na if na > NORM_EPS else 1.0
    nb = nb if nb > NORM_EPS else 1.0
    d = min(1.0, max(-1.0, dot / (na * nb)))
    if abs(d) > DOT_THRESHOLD:
        return 1.0 - t, t
    theta = math.acos(d)
    sin_theta = math.sin(theta)
    return math.sin((1.0 - t) * theta) / sin_theta, math.sin(t * theta) / sin_theta


def slerp(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: MergeContext,
    passes: Passes = TORCH,
) -> torch.Tensor:
    """Merge one tensor: base plus exactly one other input. ``||a||²``, ``||b||²`` and
    ``<a, b>`` come from one Gram pass over the inputs as stored, the output ``s0 a + s1 b``
    from a combination pass (:mod:`meldkit.methods.combination`)."""
    pair = base_and_other(inputs, base_index, "slerp")
    if pair is None:
        return inputs[0]  # a lone optional tensor: the planner's passthrough policy
    t = float(shared["t"])
    a, b = pair
    g = passes.gram([a, b])[0]
    s0, s1 = _coefficients(t, float(g[0, 0]), float(g[1, 1]), float(g[0, 1]))
    coeffs = torch.tensor([s0, s1], dtype=torch.float64)
    return passes.combine([a, b], coeffs, output_dtype([a, b], ctx.out_dtype))
