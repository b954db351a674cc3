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
The result is rounded once to the engine's output dtype (MergeKit returns float32 whatever the
inputs were).

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

from meldkit.methods.inputs import base_and_other, output_dtype
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


# Elements per block of rows (the KL is per row, so blocks of whole rows give exact values).
BLOCK_ELEMENTS = 1 << 20


def merge(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: MergeContext,
) -> torch.Tensor:
    """Merge one tensor: the base and exactly one other model.

    Two passes over blocks of rows of the inputs as stored: the importance of the sampled
    positions (for the threshold), then the importance again and the output. Each row's
    importance depends on that row only, so the values are those of a whole-tensor pass."""
    pair = base_and_other(inputs, base_index, "arcee_fusion")
    if pair is None:
        return inputs[0]  # a lone optional tensor: the planner's passthrough policy
    base, other = pair
    work = torch.float64 if torch.float64 in (base.dtype, other.dtype) else torch.float32
    length = base.shape[-1] if base.dim() > 1 else max(base.numel(), 1)
    rows = base.numel() // length if base.numel() else 0
    b2, x2 = base.reshape(rows, length), other.reshape(rows, length)
    step = max(1, BLOCK_ELEMENTS // length)
    blocks = [(r, min(rows, r + step)) for r in range(0, rows, step)]

    def scores(r0: int, r1: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        bb, xb = b2[r0:r1].to(work), x2[r0:r1].to(work)
        return bb, xb, importance(xb, bb)

    n = base.numel()
    if n > SAMPLE_SIZE:
        # MergeKit's with-replacement sample; quantiles ignore the order, so each block
        # contributes the sampled positions it holds.
        idx = torch.randint(0, n, (SAMPLE_SIZE,), generator=ctx.generator("arcee_fusion"))
        order = torch.sort(idx).values
        parts = []
        for r0, r1 in blocks:
            lo, hi = torch.searchsorted(order, torch.tensor([r0 * length, r1 * length])).tolist()
            if hi > lo:
                parts.append(scores(r0, r1)[2].reshape(-1)[order[lo:hi] - r0 * length])
        sample = torch.cat(parts)
    else:
        sample = torch.cat([scores(r0, r1)[2].reshape(-1) for r0, r1 in blocks]) if blocks else torch.zeros(0)
    levels = torch.tensor([0.25, 0.5, 0.75], dtype=sample.dtype)
    q1, median, q3 = torch.quantile(sample, levels)
    threshold = median + 1.5 * (q3 - q1)

    out_dtype = output_dtype(inputs, ctx.out_dtype)
    out = torch.empty(rows, length, dtype=out_dtype)
    for r0, r1 in blocks:
        bb, xb, imp = scores(r0, r1)
        out[r0:r1] = (bb + (xb - bb).mul_(imp >= threshold)).to(out_dtype)
    return out.reshape(base.shape)
