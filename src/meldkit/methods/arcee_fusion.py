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

from meldkit.methods import kernel_runner, sparsify
from meldkit.methods.inputs import base_and_other, output_dtype
from meldkit.methods.registry import MergeContext

SAMPLE_SIZE = 1_000_000
KL_EPS = 1e-8


def row_kl(x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(x) + ε || softmax(b) + ε)`` of each row (last axis), shape ``(..., 1)``,
    in float64. The float32 formula is ill-conditioned: ``p`` and ``q`` of a fine-tune and
    its base agree to about 1e-3 and the sum cancels to second order, so float32 rounding
    leaves a median relative error of some 10% (MergeKit's result is that noise). The fused
    CPU kernel (``kernels_pair.row_kl``) gives these values to about 1e-6."""
    p = torch.softmax(x.to(torch.float64), dim=-1).add_(KL_EPS)
    q = torch.softmax(base.to(torch.float64), dim=-1).add_(KL_EPS)
    ratio = torch.div(p, q, out=q)  # q is not needed afterwards: its buffer takes p / q
    return ratio.log_().mul_(p).sum(dim=-1, keepdim=True)


def importance(x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """``|x - b| · KL(softmax(x) || softmax(b))`` with the KL taken per row."""
    xr = x.reshape(1, -1) if x.dim() <= 1 else x  # (..., row_length)
    br = base.reshape(1, -1) if base.dim() <= 1 else base
    return ((xr - br).abs_() * row_kl(xr, br).to(xr.dtype)).reshape(x.shape)


def quartiles(sample: torch.Tensor) -> torch.Tensor:
    """``torch.quantile(sample, [0.25, 0.5, 0.75])``, bit for bit, by selecting the few order
    statistics it interpolates instead of sorting (a sort of the 1M-element sample took
    0.1 s per tensor; a numba radix selection takes a few ms, numpy's partition 20 ms)."""
    sample = sample.cpu()  # 1M values at most; a GPU's sample is selected here too
    levels = torch.tensor([0.25, 0.5, 0.75], dtype=sample.dtype)
    if sample.numel() == 0 or bool(torch.isnan(sample).any()):
        return torch.quantile(sample, levels)  # its NaN and empty-input rules
    # torch's linear interpolation: rank q·(n-1) in the sample dtype, lerp between neighbours.
    ranks = levels * (sample.numel() - 1)
    below, above = ranks.long(), ranks.ceil().long()
    wanted = torch.cat([below, above])
    module = kernel_runner.load("kernels_pair")
    if module is not None and sample.dtype == torch.float32:
        picked = torch.from_numpy(module.order_statistics(sample.numpy(), wanted.numpy(), np.empty(6, np.float32)))
    else:
        part = np.partition(sample.numpy(), sorted(set(wanted.tolist())))
        picked = torch.from_numpy(part[wanted.numpy()])
    return torch.lerp(picked[:3], picked[3:], ranks - below)


# Elements per block of rows (the KL is per row, so blocks of whole rows give exact values).
BLOCK_ELEMENTS = 1 << 20


def _keys(ctx: MergeContext) -> tuple[int, int]:
    """The streams of the sample's rows and of its columns."""
    return ctx.stream_key("arcee_fusion/rows"), ctx.stream_key("arcee_fusion/columns")


def scaled_draws(key: int, size: int, n: int) -> torch.Tensor:
    """Draws ``0 <= k < size`` of the hash stream ``key`` scaled to ``[0, n)``:
    ``(hash32(key)[k] · n) >> 32`` (the kernels' ``_scaled_draw``)."""
    return (sparsify.hash32(key, 0, size) * n) >> 32


def sample_starts(key: int, rows: int, size: int, module: Any | None = None) -> np.ndarray:
    """Where each row's draws start among ``size`` draws: draw ``k`` picks row
    ``(hash32(key)[k] · rows) >> 32``, and ``starts[r]:starts[r + 1]`` are row ``r``'s (so
    ``starts`` has ``rows + 1`` entries). ``module``: the numba kernels, counting in parallel
    ranges (the counts do not depend on them)."""
    if module is not None:
        parts = kernel_runner.ranges(size)
        counts = np.zeros((len(parts), rows), dtype=np.int64)
        kernel_runner.run_all([(module.count_sample_rows, (*kernel_runner.key_halves(key), a, b, rows, counts[t]))
                               for t, (a, b) in enumerate(parts)])
        per_row = counts.sum(axis=0)
    else:
        per_row = torch.bincount(scaled_draws(key, size, rows), minlength=rows).numpy()
    starts = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(per_row, out=starts[1:])
    return starts


def sample_index(keys: tuple[int, int], rows: int, length: int, size: int) -> torch.Tensor:
    """The ``size`` flat positions of the ``(rows, length)`` view that the quartiles are
    estimated from, uniform with replacement, in row order: row ``r`` gets the draws
    ``starts[r] <= k < starts[r + 1]`` (:func:`sample_starts`), draw ``k`` the column
    ``(hash32(keys[1])[k] · length) >> 32``. The CPU kernel draws the same columns itself."""
    starts = torch.from_numpy(sample_starts(keys[0], rows, size))
    row_of = torch.repeat_interleave(torch.arange(rows), starts.diff())
    return row_of * length + scaled_draws(keys[1], size, length)


def kl_and_sample(b2: torch.Tensor, x2: torch.Tensor, work: torch.dtype, keys: tuple[int, int] | None,
                  stored: Sequence[np.ndarray] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pass 1 over the ``(rows, length)`` views: :func:`row_kl` of each row, as ``(rows, 1)`` in
    ``work``, and the importance ``|x - b| · kl`` at the positions :func:`sample_index` draws
    from the streams ``keys`` (None: at every position, in order).

    With ``stored`` (the base's and the other's arrays as stored) one numba kernel does both,
    row by row; otherwise torch computes the KL in blocks of rows and gathers the sample. Both
    give the sample in the same order."""
    rows, length = b2.shape
    if stored is not None:
        module = kernel_runner.load("kernels_pair")
        assert module is not None
        size = rows * length if keys is None else SAMPLE_SIZE
        starts = np.zeros(rows + 1, dtype=np.int64) if keys is None else sample_starts(keys[0], rows, size, module)
        c0, c1 = kernel_runner.key_halves(0 if keys is None else keys[1])
        values = np.empty(rows, dtype=np.float64)
        sample = np.empty(size, dtype=np.float32)
        stored_b, stored_x = stored
        kernel_runner.parallel(module.row_kl, rows, stored_x, stored_b, length, KL_EPS, values, starts, c0, c1,
                               keys is None, sample)
        return torch.from_numpy(values).to(work).reshape(rows, 1), torch.from_numpy(sample)
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


def merge(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: MergeContext,
) -> torch.Tensor:
    """Merge one tensor: the base and exactly one other model.

    Two passes over blocks of rows of the inputs as stored: each row's KL (kept, one value
    per row), which gives the importance of the sampled positions and so the threshold; then
    the output (a numba kernel on the CPU). Each row's KL depends on that row only, so the
    values are those of a whole-tensor pass."""
    pair = base_and_other(inputs, base_index, "arcee_fusion")
    if pair is None:
        return inputs[0]  # a lone optional tensor: the planner's passthrough policy
    base, other = pair
    if base.numel() == 0:
        return torch.empty(base.shape, dtype=output_dtype(inputs, ctx.out_dtype), device=base.device)
    work = torch.float64 if torch.float64 in (base.dtype, other.dtype) else torch.float32
    length = base.shape[-1] if base.dim() > 1 else max(base.numel(), 1)
    rows = base.numel() // length
    b2, x2 = base.reshape(rows, length), other.reshape(rows, length)
    step = max(1, BLOCK_ELEMENTS // length)
    blocks = [(r, min(rows, r + step)) for r in range(0, rows, step)]

    module = kernel_runner.load("kernels_pair")
    fused = module is not None and work == torch.float32 and kernel_runner.cpu_tensors([base, other], ctx.device)
    stored = kernel_runner.stored_arrays([base, other]) if fused else None  # [base, other]

    # Pass 1: each row's KL (the expensive part: softmaxes and logs), one value per row, and
    # the importance at MergeKit's with-replacement sample of positions (all of them when
    # there are at most SAMPLE_SIZE).
    n = base.numel()
    kl, sample = kl_and_sample(b2, x2, work, _keys(ctx) if n > SAMPLE_SIZE else None, stored)
    q1, median, q3 = quartiles(sample)
    threshold = median + 1.5 * (q3 - q1)

    # Pass 2: out = b + (x - b) · [|x - b| · kl >= threshold].
    out_dtype = output_dtype(inputs, ctx.out_dtype)
    if stored is not None:
        assert module is not None
        out = kernel_runner.output_buffer(n, out_dtype)
        kernel_runner.parallel(module.keep_important, rows, stored[1], stored[0], length, kl.reshape(-1).numpy(),
                               np.float32(threshold.item()), kernel_runner.as_numpy(out), out.dtype == torch.bfloat16)
        return out.reshape(base.shape)
    out_t = torch.empty(rows, length, dtype=out_dtype, device=base.device)
    for r0, r1 in blocks:
        bb, xb = b2[r0:r1].to(work), x2[r0:r1].to(work)
        delta = xb - bb
        imp = delta.abs() * kl[r0:r1]
        out_t[r0:r1] = (bb + delta.mul_(imp >= threshold)).to(out_dtype)
    return out_t.reshape(base.shape)
