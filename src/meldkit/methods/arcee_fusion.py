"""Arcee Fusion: take the other model's values only where their importance is an outlier.

With base ``b`` and the other model ``x`` (rows along the last axis; a 1-D tensor is one row)::

    p   = softmax(x) + 1e-8,  q = softmax(b) + 1e-8          (per row)
    kl  = Σ p log(p / q)                                     (per row, broadcast over it)
    imp = |x - b| · kl
    thr = median(imp) + 1.5 · (Q3(imp) - Q1(imp))
    out = b + (x - b) · [imp >= thr]

The quartiles are estimated from 1,000,000 elements drawn uniformly with replacement when the
tensor is larger (as MergeKit does), here drawn from ``ctx.generator("arcee_fusion")`` on the CPU
so a seed reproduces the result on any device. The median is the 0.5 quantile of that sample.
The result stays in the working dtype (MergeKit returns float32 whatever the inputs were).

```yaml
merge_method: arcee_fusion
base_model: ./base
models: [{model: ./base}, {model: ./tuned}]
dtype: bfloat16
```
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from meldkit.methods.inputs import base_and_other
from meldkit.methods.registry import MergeContext

SAMPLE_SIZE = 1_000_000
KL_EPS = 1e-8


def importance(x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """``|x - b| · KL(softmax(x) || softmax(b))`` with the KL taken per row."""
    xr = x.reshape(1, -1) if x.dim() <= 1 else x  # (..., row_length)
    br = base.reshape(1, -1) if base.dim() <= 1 else base
    p = torch.softmax(xr, dim=-1).add_(KL_EPS)
    q = torch.softmax(br, dim=-1).add_(KL_EPS)
    kl = (p * torch.log(p / q)).sum(dim=-1, keepdim=True)  # (..., 1)
    del p, q
    return ((xr - br).abs_() * kl).reshape(x.shape)


def outlier_threshold(scores: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``median + 1.5 IQR`` of ``scores``, from a with-replacement sample for large tensors."""
    flat = scores.reshape(-1)
    if flat.numel() > SAMPLE_SIZE:
        idx = torch.randint(0, flat.numel(), (SAMPLE_SIZE,), generator=generator)
        flat = flat[idx.to(flat.device)]
    levels = torch.tensor([0.25, 0.5, 0.75], dtype=flat.dtype, device=flat.device)
    q1, median, q3 = torch.quantile(flat, levels)
    return median + 1.5 * (q3 - q1)


def merge(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: MergeContext,
) -> torch.Tensor:
    """Merge one tensor: the base and exactly one other model."""
    pair = base_and_other(inputs, base_index, "arcee_fusion")
    if pair is None:
        return inputs[0]  # a lone optional tensor: the planner's passthrough policy
    base, other = pair
    scores = importance(other, base)
    keep = scores >= outlier_threshold(scores, ctx.generator("arcee_fusion"))
    del scores
    return base + (other - base).mul_(keep)
