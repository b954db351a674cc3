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

from meldkit.methods import combination
from meldkit.methods.inputs import base_and_other, output_dtype
from meldkit.methods.registry import MergeContext

DOT_THRESHOLD = 0.9995
NORM_EPS = 1e-8


# Reductions and the output are computed in blocks of this many elements, so inputs may stay
# in their stored dtype (bf16) and no float32 copy of a whole input is ever made.
BLOCK = 1 << 22


def _blocks(n: int) -> range:
    return range(0, n, BLOCK)


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


def slerp(t: float, a: torch.Tensor, b: torch.Tensor, out_dtype: str | None = None) -> torch.Tensor:
    """Spherical interpolation from ``a`` (t=0) to ``b`` (t=1), MergeKit's conventions.

    ``a`` and ``b`` may be bf16/fp16: every block is upcast exactly before any arithmetic, and
    the result is float32 (float64 when an input is), or ``out_dtype`` (a safetensors dtype
    code, rounded once) when given.

    On the CPU with numba, the norms and the dot come from the Gram kernel of
    :mod:`meldkit.methods.combination` (float64 products) and the output from its combination
    kernel (float32 ``s0 a + s1 b``, written in the output dtype); otherwise from torch in
    blocks (float32 dots per block, summed in float64).
    """
    if combination.uses_kernels([a, b]):
        g = combination.gram([a, b])[0]
        s0, s1 = _coefficients(t, float(g[0, 0]), float(g[1, 1]), float(g[0, 1]))
        coeffs = torch.tensor([s0, s1], dtype=torch.float64)
        return combination.combine([a, b], coeffs, output_dtype([a, b], out_dtype))
    work = torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32
    af, bf = a.reshape(-1), b.reshape(-1)
    n = af.numel()
    # Norms and dot in float64 accumulators over float32 blocks.
    sq_a = sq_b = dot = 0.0
    for s in _blocks(n):
        xa, xb = af[s : s + BLOCK].to(work), bf[s : s + BLOCK].to(work)
        sq_a += float(torch.dot(xa, xa))
        sq_b += float(torch.dot(xb, xb))
        dot += float(torch.dot(xa, xb))
    s0, s1 = _coefficients(t, sq_a, sq_b, dot)
    out = torch.empty(a.shape, dtype=work, device=a.device)
    flat = out.view(-1)
    for s in _blocks(n):
        block = flat[s : s + BLOCK]
        torch.mul(af[s : s + BLOCK].to(work), s0, out=block)
        block.add_(bf[s : s + BLOCK].to(work), alpha=s1)  # (1-t)a + t b, or s0 a + s1 b
    return out


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
    return slerp(t, base, other, ctx.out_dtype)
