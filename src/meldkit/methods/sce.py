"""SCE (FuseChat): Select by variance, Calculate weights from energy, Erase minority signs.

With task vectors ``δ_i = x_i - b``::

    if select_topk < 1:   keep, for every model, the top floor(count_nonzero(var) * select_topk)
                          positions by var = population variance of δ across models
    m_i  = [sign(δ_i) == sign(Σ_j δ_j)]      (TIES "sum" election: 0 -> +, zeros never agree)
    ω_i  = mean(δ_i²) / Σ_j mean(δ_j²)        (uniform 1/N when that sum is < 1e-6)
    out  = b + Σ_i ω_i m_i δ_i / max(Σ_i ω_i m_i, 1e-6)

There are no user weights; ``int8_mask`` is accepted and has no effect on the values. The math
runs in float32 (float64 for float64 inputs); the energies are float64 sums. On the CPU, a fused
fast path (:mod:`meldkit.kernels.sce`) gives the same selection and signs; its energy sums
add in another order (within a few float64 ulps, so ω agrees to float32 rounding).

```yaml
merge_method: sce
base_model: ./base
models: [{model: ./a}, {model: ./b}, {model: ./c}]
parameters: {select_topk: 0.5}
```
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from meldkit.methods.inputs import non_base, output_dtype, param_float
from meldkit.methods.registry import MergeContext
from meldkit.methods.sparsify import top_k_mask
from meldkit.methods.task_vectors import agreement


def variance(deltas: Sequence[torch.Tensor]) -> torch.Tensor:
    """Population variance across models, by Welford's update (exactly 0 where all agree)."""
    mean = torch.zeros_like(deltas[0])
    m2 = torch.zeros_like(deltas[0])
    for k, d in enumerate(deltas, start=1):
        diff = d - mean
        mean.add_(diff, alpha=1.0 / k)
        m2.addcmul_(diff, d - mean)
    return m2.div_(len(deltas))


def select(deltas: list[torch.Tensor], topk: float) -> None:
    """Keep, in every model's δ (in place), the top ``floor(count_nonzero(var) · topk)``
    positions by variance across models; ties at the cut-off are dropped in flat order (the
    first ones). ``topk >= 1`` keeps everything; nothing kept gives literal +0 deltas."""
    if topk >= 1:
        return
    k = 0
    if topk > 0:
        var = variance(deltas).abs_()  # a NaN variance may carry a sign bit: clear it
        k = int(int(torch.count_nonzero(var)) * topk)
    if k <= 0:
        for d in deltas:
            d.zero_()
        return
    keep = top_k_mask(var, k)
    for d in deltas:
        d.mul_(keep)


def energy_weights(deltas: Sequence[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """ω (in ``dtype``): each model's ``mean(δ²)`` (a float64 sum of exact float64 squares)
    over their sum; uniform when that sum is (nearly) zero."""
    n = max(deltas[0].numel(), 1)
    energies = torch.tensor([float(d.double().square().sum()) / n for d in deltas], dtype=dtype)
    total = float(energies.sum())
    if abs(total) < 1e-6:
        return torch.full_like(energies, 1.0 / len(energies))
    return energies / total


def mix(base: torch.Tensor, deltas: list[torch.Tensor], omega: torch.Tensor) -> torch.Tensor:
    """``b + Σ ω_i m_i δ_i / max(Σ ω_i m_i, 1e-6)`` with the TIES sign election."""
    total_delta = deltas[0].clone()
    for d in deltas[1:]:
        total_delta.add_(d)
    positive = total_delta >= 0
    del total_delta
    mixed = torch.zeros_like(base)
    divisor = torch.zeros_like(base)
    for i, d in enumerate(deltas):
        weight = agreement(d, positive) * omega[i]  # ω_i m_i
        mixed.addcmul_(d, weight)
        divisor.add_(weight)
    return base + mixed.div_(divisor.clamp_min_(1e-6))


def sce(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: MergeContext,
) -> torch.Tensor:
    """Merge one tensor: the base and any number of other models."""
    assert base_index is not None, "sce needs a base model"
    others = non_base(inputs, base_index, per_input)
    if not others:
        return inputs[base_index]
    work = torch.float64 if any(x.dtype == torch.float64 for x in inputs) else torch.float32
    base = inputs[base_index].to(work)
    deltas = [o.tensor.to(work) - base for o in others]
    select(deltas, param_float(shared, "select_topk", 1.0))
    out = mix(base, deltas, energy_weights(deltas, work))
    return out.to(output_dtype(inputs, ctx.out_dtype))
