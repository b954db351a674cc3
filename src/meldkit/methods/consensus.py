"""Consensus merging with TALL masks (Wang et al., ICML 2024, arXiv 2405.07813), over task
arithmetic or over TIES.

For weighted task vectors ``v_t = w_t (x_t − b)``::

    τ_MTL  = Σ_t v_t
    m_t    = [ |v_t| ≥ mask_lambda_t · |τ_MTL − v_t| ]      (task t's TALL mask)
    c      = [ Σ_t m_t ≥ k ]                                (entries at least k tasks need)
    merged = τ_MTL                                 with base_method: task_arithmetic
             ties(x, b; weight, density, normalize) − b      with base_method: ties
    out    = b + c ⊙ lambda · merged

``k = 2`` drops the "selfish" entries (useful to one task only) and the "catastrophic" ones
(useful to none); ``k = 1`` keeps everything some task needs, ``k = 0`` disables the mask.
The masks always come from the task-arithmetic sum, as in the paper; the TIES part is
meldkit's own ``ties`` (:mod:`meldkit.methods.task_vectors`: ``density`` trimming, sign
election, ``normalize``, ``lambda``). Element-wise apart from TIES's trimming, so every tensor
(norms, embeddings, LM heads) is treated alike.

```yaml
merge_method: consensus
base_model: ./base
models:
  - {model: ./math, parameters: {weight: 0.5}}
  - {model: ./code, parameters: {weight: 0.5}}
  - {model: ./chat, parameters: {weight: 0.5}}
parameters: {base_method: task_arithmetic, k: 2}
```
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from meldkit.methods import spectral
from meldkit.methods.inputs import Operand, non_base, param_float
from meldkit.methods.registry import MergeContext
from meldkit.methods.task_vectors import merge_task_vectors

__all__ = ["consensus", "consensus_mask"]


def _weighted(operand: Operand, base: torch.Tensor) -> torch.Tensor:
    return (operand.tensor.to(base.dtype) - base).mul_(param_float(operand.params, "weight", 1.0))


def consensus_mask(
    base: torch.Tensor, others: Sequence[Operand], k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c, τ_MTL)``: the consensus mask and the weighted task-vector sum."""
    total = torch.zeros_like(base)
    for operand in others:
        total.add_(_weighted(operand, base))
    votes = torch.zeros(base.shape, dtype=torch.int32, device=base.device)
    for operand in others:
        v = _weighted(operand, base)  # recomputed: one task vector in memory at a time
        factor = param_float(operand.params, "mask_lambda", 0.4)
        votes.add_(v.abs() >= (total - v).abs_().mul_(factor))
    return votes >= k, total


def consensus(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: MergeContext,
) -> torch.Tensor:
    """Merge one tensor with consensus merging (see the module docstring)."""
    assert base_index is not None, "consensus needs a base model"
    base = inputs[base_index].to(spectral.work_dtype(inputs))
    others = non_base(inputs, base_index, per_input)
    if not others:
        return base
    k = int(param_float(shared, "k", 2))
    mask, total = consensus_mask(base, others, k)
    del others
    if (shared.get("base_method") or "task_arithmetic") == "ties":
        del total
        merged = merge_task_vectors(inputs, base_index, shared, per_input, ctx, method="ties")
        merged.sub_(base)  # ties returns a fresh tensor: b + λ·(its mixed task vector)
    else:
        merged = total.mul_(param_float(shared, "lambda", 1.0))
    return merged.mul_(mask).add_(base)
