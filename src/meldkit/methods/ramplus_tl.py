"""RAM+ (tensor-local): RAM with each model's unique part boosted by its overlap ratio.

As :mod:`meldkit.methods.ram` (``active_i = |δ_i| > epsilon``, ``c = Σ active_i``), except
that model ``i``'s unique entries are scaled by ``λ_i``, counted over this tensor only::

    ρ_i = #(active_i ∧ c > 1) / max(#(active_i ∧ c == 1), epsilon)
    λ_i = 1 + r · clamp(ρ_i, 0, alpha)
    out = b + Σ_i λ_i δ_i active_i [c == 1] + (Σ_i δ_i active_i [c > 1]) / max(c, 1)

```yaml
merge_method: ramplus_tl
base_model: ./base
models: [{model: ./agent_a}, {model: ./agent_b}]
parameters: {r: 0.1, alpha: 0.2, epsilon: 1.0e-5}
```
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from meldkit.methods.inputs import non_base, output_dtype, param_float
from meldkit.methods.registry import MergeContext

# Elements per block: each pass holds a few float32 blocks per model, not whole tensors.
BLOCK_ELEMENTS = 1 << 20


def _blocks(n: int) -> list[tuple[int, int]]:
    return [(s, min(n, s + BLOCK_ELEMENTS)) for s in range(0, n, BLOCK_ELEMENTS)] or [(0, 0)]


def ramplus_tl(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: MergeContext,
) -> torch.Tensor:
    """Merge one tensor: the base and any number of other models.

    Two passes over the inputs as stored: the overlap counts ``ρ_i`` (integers, so chunk by
    chunk is exact), then the output, element-wise exactly as a whole-tensor pass."""
    assert base_index is not None, "ramplus_tl needs a base model"
    base_t = inputs[base_index]
    others_t = [o.tensor for o in non_base(inputs, base_index, per_input)]
    if not others_t:
        return base_t
    epsilon = param_float(shared, "epsilon", 1e-5)
    r = param_float(shared, "r", 0.1)
    alpha = param_float(shared, "alpha", 0.2)
    work = torch.float64 if any(x.dtype == torch.float64 for x in inputs) else torch.float32
    flat_base = base_t.reshape(-1)
    flat_others = [x.reshape(-1) for x in others_t]

    def load(s: int, e: int) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        b = flat_base[s:e].to(work)
        deltas = [x[s:e].to(work) - b for x in flat_others]
        count = torch.zeros_like(b)
        for d in deltas:
            count.add_(d.abs() > epsilon)
        return b, deltas, count

    mine_total = [0] * len(flat_others)
    common_total = [0] * len(flat_others)
    blocks = _blocks(flat_base.numel())
    for s, e in blocks:
        _, deltas, count = load(s, e)
        for i, d in enumerate(deltas):
            active = d.abs() > epsilon
            mine_total[i] += int((active & (count == 1)).sum())
            common_total[i] += int((active & (count > 1)).sum())
    lams = boosts(mine_total, common_total, r, alpha, epsilon)

    out_dtype = output_dtype(inputs, ctx.out_dtype)
    out = torch.empty(flat_base.numel(), dtype=out_dtype, device=base_t.device)
    for s, e in blocks:
        b, deltas, count = load(s, e)
        unique = torch.zeros_like(b)
        overlap = torch.zeros_like(b)
        for d, lam in zip(deltas, lams):
            active = d.abs() > epsilon
            # (δ·mask)·λ rounded twice, as the kernels do (an `alpha=` add may fuse into one FMA).
            unique.add_(d * (active & (count == 1)) * lam)
            overlap.add_(d * (active & (count > 1)))
        out[s:e] = (b + unique + overlap.div_(count.clamp_min_(1))).to(out_dtype)
    return out.reshape(base_t.shape)


def boosts(
    mine: list[int], common: list[int], r: float, alpha: float, epsilon: float
) -> list[float]:
    """``λ_i = 1 + r · clamp(common_i / max(mine_i, epsilon), 0, alpha)``.

    With ``epsilon <= 0`` and no unique entries the ratio is ``common / 0``: +inf (capped at
    alpha) when there are shared entries, 0 when there are none (λ then scales nothing)."""
    lams = []
    for m, c in zip(mine, common):
        denominator = max(m, epsilon)
        rho = c / denominator if denominator > 0 else (math.inf if c > 0 else 0.0)
        lams.append(1 + r * min(max(rho, 0.0), alpha))
    return lams
