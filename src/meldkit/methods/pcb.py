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

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from meldkit.methods import sparsify, spectral
from meldkit.methods.inputs import param_float
from meldkit.methods.registry import MergeContext

__all__ = ["pcb", "pcb_weights"]


def _ranked(row: torch.Tensor, fraction: float, offset: int = 0) -> torch.Tensor:
    """The entry of ascending rank ``⌊N·fraction + offset⌋`` (0-based, clamped to the row)."""
    n = row.numel()
    rank = min(max(int(n * fraction + offset), 0), n - 1)
    return sparsify.kth_smallest(row, rank + 1)


def _minmax(row: torch.Tensor) -> torch.Tensor:
    """``(v − min) / (max − min)`` in place; a constant row becomes 0."""
    low, high = row.min(), row.max()
    span = high - low
    if float(span) <= 0:
        return row.zero_()
    return row.sub_(low).div_(span)


def pcb_weights(flat: torch.Tensor, ratio: float, clamp: float) -> torch.Tensor:
    """The balancing weights ``m`` (T × N) of task vectors ``flat`` (T × N), which becomes
    the clamped task vectors ``τ̃`` in place (see the module docstring). One row at a time,
    so the scratch is ``flat``, the weights and a few rows."""
    n_tasks, n = flat.shape
    total = flat.sum(dim=0)  # (N,)
    weights = torch.empty_like(flat)
    for t in range(n_tasks):
        row = flat[t]
        magnitude = row.abs()
        low = _ranked(magnitude, clamp)
        high = _ranked(magnitude, 1 - clamp, offset=-1)
        magnitude.clamp_(min=low, max=high)
        score = torch.tanh(row * total)  # inter-balancing: agreement with the sum
        row.sign_().mul_(magnitude)  # τ̃_t = sign(τ_t)·|τ|_t: a zero stays zero
        score.mul_(_minmax(magnitude).square_().mul_(n_tasks).exp_())  # × intra-balancing
        threshold = _ranked(score, 1 - ratio)
        weights[t] = _minmax(score.clamp_(min=threshold))
    return weights


def pcb(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: MergeContext,
) -> torch.Tensor:
    """Merge one tensor with PCB-merging (see the module docstring)."""
    base, taus = spectral.task_vectors(inputs, base_index, per_input)
    if not taus:
        return base
    flat = torch.stack([tau.reshape(-1) for tau in taus])  # (T, N)
    del taus
    ratio = param_float(shared, "ratio", 0.1)
    weights = pcb_weights(flat, ratio, param_float(shared, "clamp", 1e-4))  # flat is now τ̃
    merged = torch.zeros_like(flat[0])
    for t in range(flat.shape[0]):
        merged.addcmul_(weights[t], flat[t])
    del flat
    merged.div_(weights.sum(dim=0).clamp_(min=1e-12))
    lam = param_float(shared, "lambda", 1.0)
    return merged.mul_(lam).reshape(base.shape).add_(base)
