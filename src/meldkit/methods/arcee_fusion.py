"""Arcee Fusion: take the other model's values only where their importance is an outlier.

With base ``b`` and the other model ``x`` (rows along the last axis; a 1-D tensor is one row)::

    p   = softmax(x) + 1e-8,  q = softmax(b) + 1e-8          (per row)
    kl  = Σ p log(p / q)                                     (per row, broadcast over it)
    imp = |x - b| · kl
    thr = median(imp) + 1.5 · (Q3(imp) - Q1(imp))
    out = b + (x - b) · [imp >= thr]

The quartiles are estimated from 1,000,000 positions drawn uniformly with replacement when the
tensor is larger (as MergeKit does). Here each draw's row and then, row by row, each draw's
column come from counter-based hash streams keyed by the seed and the tensor's name
(:func:`sample_index`): the same multiset of positions in distribution as drawing flat
positions, a seed reproduces it on any device and thread count, and the CPU kernel draws each
row's columns while the row is in cache. The median is the 0.5 quantile of that sample.
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

import numpy as np
import torch

from meldkit.methods import sparsify
from meldkit.methods.inputs import base_and_other, output_dtype
from meldkit.methods.registry import MergeContext

SAMPLE_SIZE = 1_000_000
KL_EPS = 1e-8


def row_kl(x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(x) + ε || softmax(b) + ε)`` of each row (last axis), shape ``(..., 1)``,
    in float64. The float32 formula is ill-conditioned: ``p`` and ``q`` of a fine-tune and
    its base agree to about 1e-3 and the sum cancels to second order, so float32 rounding
    leaves a median relative error of some 10% (MergeKit's result is that noise). The CPU
    fast path (:mod:`meldkit.kernels.arcee_fusion`) gives these values to about 1e-6."""
    p = torch.softmax(x.to(torch.float64), dim=-1).add_(KL_EPS)
    q = torch.softmax(base.to(torch.float64), dim=-1).add_(KL_EPS)
    ratio = torch.div(p, q, out=q)  # q is not needed afterwards: its buffer takes p / q
    return ratio.log_().mul_(p).sum(dim=-1, keepdim=True)


def importance(x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """``|x - b| · KL(softmax(x) || softmax(b))`` with the KL taken per row."""
    xr = x.reshape(1, -1) if x.dim() <= 1 else x  # (..., row_length)
    br = base.reshape(1, -1) if base.dim() <= 1 else base
    return ((xr - br).abs_() * row_kl(xr, br).to(xr.dtype)).reshape(x.shape)


def quartile_ranks(n: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """torch.quantile's linear interpolation for the levels 0.25, 0.5 and 0.75 of ``n`` values
    of ``dtype``: the fractional ranks ``q·(n-1)`` in that dtype and the order statistics
    below and above them."""
    ranks = torch.tensor([0.25, 0.5, 0.75], dtype=dtype) * (n - 1)
    return ranks, ranks.long(), ranks.ceil().long()


def quartiles(sample: torch.Tensor) -> torch.Tensor:
    """``torch.quantile(sample, [0.25, 0.5, 0.75])``, bit for bit, by selecting the few order
    statistics it interpolates instead of sorting the sample."""
    sample = sample.cpu()  # 1M values at most; a GPU's sample is selected here too
    if sample.numel() == 0 or bool(torch.isnan(sample).any()):
        levels = torch.tensor([0.25, 0.5, 0.75], dtype=sample.dtype)
        return torch.quantile(sample, levels)  # its NaN and empty-input rules
    ranks, below, above = quartile_ranks(sample.numel(), sample.dtype)
    wanted = torch.cat([below, above])
    part = np.partition(sample.numpy(), sorted(set(wanted.tolist())))
    picked = torch.from_numpy(part[wanted.numpy()])
    return torch.lerp(picked[:3], picked[3:], ranks - below)


# Elements per block of rows (the KL is per row, so blocks of whole rows give exact values).
BLOCK_ELEMENTS = 1 << 20


def sample_keys(ctx: MergeContext) -> tuple[int, int]:
    """The streams of the sample's rows and of its columns."""
    return ctx.stream_key("arcee_fusion/rows"), ctx.stream_key("arcee_fusion/columns")


def scaled_draws(key: int, size: int, n: int) -> torch.Tensor:
    """Draws ``0 <= k < size`` of the hash stream ``key`` scaled to ``[0, n)``:
    ``(hash32(key)[k] · n) >> 32`` (the kernels' ``_scaled_draw``)."""
    return (sparsify.hash32(key, 0, size) * n) >> 32


def row_starts(per_row: np.ndarray) -> np.ndarray:
    """``starts`` with ``starts[r]:starts[r + 1]`` the draws of row ``r``, from per-row counts."""
    starts = np.zeros(len(per_row) + 1, dtype=np.int64)
    np.cumsum(per_row, out=starts[1:])
    return starts


def sample_starts(key: int, rows: int, size: int) -> np.ndarray:
    """Where each row's draws start among ``size`` draws: draw ``k`` picks row
    ``(hash32(key)[k] · rows) >> 32``, and ``starts[r]:starts[r + 1]`` are row ``r``'s (so
    ``starts`` has ``rows + 1`` entries)."""
    return row_starts(torch.bincount(scaled_draws(key, size, rows), minlength=rows).numpy())


def sample_index(keys: tuple[int, int], rows: int, length: int, size: int) -> torch.Tensor:
    """The ``size`` flat positions of the ``(rows, length)`` view that the quartiles are
    estimated from, uniform with replacement, in row order: row ``r`` gets the draws
    ``starts[r] <= k < starts[r + 1]`` (:func:`sample_starts`), draw ``k`` the column
    ``(hash32(keys[1])[k] · length) >> 32``. The CPU kernel draws the same columns itself."""
    starts = torch.from_numpy(sample_starts(keys[0], rows, size))
    row_of = torch.repeat_interleave(torch.arange(rows), starts.diff())
    return row_of * length + scaled_draws(keys[1], size, length)


def kl_and_sample(
    b2: torch.Tensor, x2: torch.Tensor, work: torch.dtype, keys: tuple[int, int] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pass 1 over the ``(rows, length)`` views: :func:`row_kl` of each row, as ``(rows, 1)`` in
    ``work`` (in blocks of rows), and the importance ``|x - b| · kl`` at the positions
    :func:`sample_index` draws from the streams ``keys`` (None: at every position, in order)."""
    rows, length = b2.shape
    kl = torch.empty(rows, 1, dtype=work, device=b2.device)
    step = max(1, BLOCK_ELEMENTS // max(length, 1))
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        kl[r0:r1] = row_kl(x2[r0:r1], b2[r0:r1])
    if keys is None:
        return kl, (x2.to(work) - b2.to(work)).abs_().mul_(kl).reshape(-1)
    index = sample_index(keys, rows, length, SAMPLE_SIZE).to(b2.device)
    bb = b2.reshape(-1)[index].to(work)
    xb = x2.reshape(-1)[index].to(work)
    return kl, (xb - bb).abs_() * kl.reshape(-1)[index // length]


def arcee_fusion(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: MergeContext,
) -> torch.Tensor:
    """Merge one tensor: the base and exactly one other model.

    Two passes over blocks of rows of the inputs as stored: each row's KL (kept, one value
    per row), which gives the importance of the sampled positions and so the threshold; then
    the output. Each row's KL depends on that row only, so the values are those of a
    whole-tensor pass."""
    pair = base_and_other(inputs, base_index, "arcee_fusion")
    if pair is None:
        return inputs[0]  # a lone optional tensor: the planner's passthrough policy
    base, other = pair
    out_dtype = output_dtype(inputs, ctx.out_dtype)
    if base.numel() == 0:
        return torch.empty(base.shape, dtype=out_dtype, device=base.device)
    work = torch.float64 if torch.float64 in (base.dtype, other.dtype) else torch.float32
    rows, length = row_layout(base)
    b2, x2 = base.reshape(rows, length), other.reshape(rows, length)

    # Pass 1: each row's KL (the expensive part: softmaxes and logs), one value per row, and
    # the importance at MergeKit's with-replacement sample of positions (all of them when
    # there are at most SAMPLE_SIZE).
    kl, sample = kl_and_sample(
        b2, x2, work, sample_keys(ctx) if base.numel() > SAMPLE_SIZE else None
    )
    q1, median, q3 = quartiles(sample)
    threshold = median + 1.5 * (q3 - q1)

    # Pass 2: out = b + (x - b) · [|x - b| · kl >= threshold].
    out = torch.empty(rows, length, dtype=out_dtype, device=base.device)
    step = max(1, BLOCK_ELEMENTS // length)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        bb, xb = b2[r0:r1].to(work), x2[r0:r1].to(work)
        delta = xb - bb
        imp = delta.abs() * kl[r0:r1]
        out[r0:r1] = (bb + delta.mul_(imp >= threshold)).to(out_dtype)
    return out.reshape(base.shape)


def row_layout(x: torch.Tensor) -> tuple[int, int]:
    """``(rows, length)``: rows along the last axis; a 1-D tensor is one row."""
    length = x.shape[-1] if x.dim() > 1 else max(x.numel(), 1)
    return x.numel() // length, length
