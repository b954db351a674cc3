"""PCB-merging: parameter competition balancing (Du et al., NeurIPS 2024, arXiv 2410.02396).

With the task vectors ``τ_t = x_t − b`` of one tensor flattened (``N`` entries each, ``T``
models) and ``v[i]`` the entry of ascending rank ``i`` of a row (``i`` clamped to ``0..N−1``)::

    |τ|_t   ← clamp(|τ_t|, |τ_t|[⌊N·clamp⌋], |τ_t|[⌊N(1 − clamp) − 1⌋])   (tame the extremes)
    τ̃_t     = sign(τ_t) · |τ|_t
    intra_t = exp(T · minmax_t(|τ|_t)²)                          (importance within the task)
    inter_t = tanh(τ_t ⊙ Σ_j τ_j)                                 (agreement with the others)
    score_t = intra_t ⊙ inter_t
    m_t     = minmax_t(max(score_t, score_t[⌊N(1 − ratio)⌋]))     (top ``ratio`` kept, graded)
    merged  = Σ_t m_t τ̃_t / max(Σ_t m_t, 1e-12)
    out     = b + lambda · merged

``minmax_t(v) = (v − min v) / (max v − min v)`` over the row (0 where the row is constant).
The clamp, normalisations and the graded top-``ratio`` weights follow the authors' code
(``clamp`` = 1e-4 of each tail there); the paper's text describes the same steps. Two choices
of ours: the competition runs per tensor, as every meldkit method does (the authors flatten
the whole model into one row per task, like TIES); and ``inter`` uses the unclamped task
vectors, as their code does. Every tensor, embeddings and norms included, is treated alike.

```yaml
merge_method: pcb
base_model: ./base
models: [{model: ./math}, {model: ./code}, {model: ./chat}]
parameters: {ratio: 0.1, lambda: 1.0}
```
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from meldkit.methods import sparsify, spectral
from meldkit.methods.inputs import non_base, param_float
from meldkit.methods.registry import MergeContext

__all__ = ["pcb", "pcb_weights", "kth_smallest", "tail_pair"]


def _rank(n: int, fraction: float, offset: int = 0) -> int:
    """The 1-based ascending rank ``⌊n·fraction + offset⌋ + 1``, clamped to ``1..n``."""
    return min(max(int(n * fraction + offset), 0), n - 1) + 1


def kth_smallest(row: torch.Tensor, k: int) -> torch.Tensor:
    """The exact ``k``-th smallest entry (1-based) of a 1-D tensor, as a 0-dim tensor.

    Exact in every case; the route is only a matter of speed. PCB asks for ranks near the ends
    (its clamp, 1e-4 of each tail: :func:`tail_pair`) and one in the middle (its top
    ``ratio``) of rows of millions of entries. Near an end, ``topk`` of the short side is one
    pass. In the middle, the value is looked up in a strided sample (every 61st entry: a prime
    stride, so a matrix's columns are not sampled in step), a band of sample ranks around it
    wide enough to hold the true rank with overwhelming probability (6 standard deviations) is
    cut out of the row, and the rank is taken in that band (about 1% of the row); should the
    band miss (it can only be slower, never wrong), the whole row is searched."""
    n = row.numel()
    short = min(k, n - k + 1)
    if short <= _TOPK_MAX:
        if k == short:
            return torch.topk(row, k, largest=False, sorted=False).values.max()
        return torch.topk(row, short, largest=True, sorted=False).values.min()
    if n < _SAMPLE_MIN:
        return sparsify.kth_smallest(row, k)
    sample = row[::_STRIDE]
    m = sample.numel()
    p = k / n
    low_rank = max(1, math.floor(p * m - _margin(m, p)))
    high_rank = min(m, math.ceil(p * m + _margin(m, p)))
    low = torch.kthvalue(sample, low_rank).values
    high = torch.kthvalue(sample, high_rank).values
    below = int(torch.count_nonzero(row < low))  # count_nonzero: 7x faster than a bool sum
    band = row[(row >= low).logical_and_(row <= high)]
    if below < k <= below + band.numel():
        return torch.kthvalue(band, k - below).values
    return sparsify.kth_smallest(row, k)


def tail_pair(row: torch.Tensor, k_low: int, k_high: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact ``k_low``-th and ``k_high``-th smallest entries (1-based) of a 1-D tensor,
    where ``k_low`` is near the bottom and ``k_high`` near the top: PCB's two clamp bounds.

    One strided sample gives a cut above the low rank and one below the high rank, each
    ``6σ + 8`` sample ranks beyond the expected place; one pass cuts out the entries beyond
    the two cuts (a few thousand of millions), and each rank is taken among them. That is
    exact whenever a cut holds at least its rank's count of entries (checked; else the rank is
    searched in the whole row), at a fifth to a seventh of what two ``topk`` passes cost on
    the CPU (``benchmarks/micro.py``)."""
    n = row.numel()
    from_top = n - k_high + 1  # k_high's rank counted from the largest
    if n < _SAMPLE_MIN or max(k_low, from_top) > n // 4:
        return kth_smallest(row, k_low), kth_smallest(row, k_high)
    sample = row[::_STRIDE]
    m = sample.numel()
    low_rank = min(m, math.ceil(k_low / n * m + _margin(m, k_low / n)))
    high_rank = max(1, m + 1 - math.ceil(from_top / n * m + _margin(m, from_top / n)))
    low_cut = torch.kthvalue(sample, low_rank).values
    high_cut = torch.kthvalue(sample, high_rank).values
    if not bool(low_cut < high_cut):
        return kth_smallest(row, k_low), kth_smallest(row, k_high)
    tails = row[(row <= low_cut).logical_or_(row >= high_cut)]
    lows, highs = tails[tails <= low_cut], tails[tails >= high_cut]
    low = torch.kthvalue(lows, k_low).values if lows.numel() >= k_low else None
    high = (
        torch.kthvalue(highs, highs.numel() - from_top + 1).values
        if highs.numel() >= from_top
        else None
    )
    return (
        kth_smallest(row, k_low) if low is None else low,
        kth_smallest(row, k_high) if high is None else high,
    )


def _margin(m: int, p: float) -> float:
    """Sample ranks between a sampled quantile and the true one: 6 standard deviations + 8."""
    return 6 * math.sqrt(m * p * (1 - p)) + 8


# Ranks within this distance of an end go to topk; rows this long or longer are sampled.
_TOPK_MAX = 4096
_SAMPLE_MIN = 1 << 16
_STRIDE = 61


def pcb_weights(flat: torch.Tensor, ratio: float, clamp: float) -> torch.Tensor:
    """The balancing weights ``m`` (T × N) of task vectors ``flat`` (T × N), which becomes
    the clamped task vectors ``τ̃`` in place (see the module docstring). One row at a time,
    each task's score built in its row of the weights, so the scratch is ``flat``, the weights
    and two rows (allocated once: fresh tensors of this size cost page faults every time)."""
    n_tasks, n = flat.shape
    total = flat.sum(dim=0)  # (N,)
    weights = torch.empty_like(flat)
    magnitude = torch.empty_like(total)
    for t in range(n_tasks):
        row, score = flat[t], weights[t]
        torch.abs(row, out=magnitude)
        low, high = tail_pair(magnitude, _rank(n, clamp), _rank(n, 1 - clamp, offset=-1))
        magnitude.clamp_(min=low, max=high)  # now its min is low and its max is high
        torch.mul(row, total, out=score).tanh_()  # inter-balancing: agreement with the sum
        row.sign_().mul_(magnitude)  # τ̃_t = sign(τ_t)·|τ|_t: a zero stays zero
        span = high - low
        if float(span) > 0:  # minmax(|τ|_t), with the bounds the clamp already gave
            magnitude.sub_(low).div_(span)
        else:
            magnitude.zero_()
        score.mul_(magnitude.square_().mul_(n_tasks).exp_())  # × intra-balancing
        threshold = kth_smallest(score, _rank(n, 1 - ratio))
        score.clamp_(min=threshold)  # its min is now the threshold
        span = score.max() - threshold
        if float(span) > 0:
            score.sub_(threshold).div_(span)
        else:
            score.zero_()
    return weights


def pcb(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: MergeContext,
) -> torch.Tensor:
    """Merge one tensor with PCB-merging (see the module docstring)."""
    assert base_index is not None, "pcb needs a base model"
    work = spectral.work_dtype(inputs)
    base = inputs[base_index].to(work)
    operands = non_base(inputs, base_index, per_input)
    if not operands:
        return base
    flat = torch.empty(len(operands), base.numel(), dtype=work, device=base.device)  # (T, N)
    for t, operand in enumerate(operands):
        torch.sub(operand.tensor.reshape(-1).to(work), base.reshape(-1), out=flat[t])
    ratio = param_float(shared, "ratio", 0.1)
    weights = pcb_weights(flat, ratio, param_float(shared, "clamp", 1e-4))  # flat is now τ̃
    merged = torch.zeros_like(flat[0])
    for t in range(flat.shape[0]):  # row by row: no (T, N) product in memory
        merged.addcmul_(weights[t], flat[t])
    del flat
    merged.div_(weights.sum(dim=0).clamp_(min=1e-12))
    lam = param_float(shared, "lambda", 1.0)
    return merged.mul_(lam).reshape(base.shape).add_(base)
