"""SCE (FuseChat): Select by variance, Calculate weights from energy, Erase minority signs.

With task vectors ``δ_i = x_i - b``::

    if select_topk < 1:   keep, for every model, the top floor(count_nonzero(var) * select_topk)
                          positions by var = population variance of δ across models
    m_i  = [sign(δ_i) == sign(Σ_j δ_j)]      (TIES "sum" election: 0 -> +, zeros never agree)
    ω_i  = mean(δ_i²) / Σ_j mean(δ_j²)        (uniform 1/N when that sum is < 1e-6)
    out  = b + Σ_i ω_i m_i δ_i / max(Σ_i ω_i m_i, 1e-6)

There are no user weights; ``int8_mask`` is accepted and has no effect on the values.

Three paths compute the same values:

* on the CPU with numba installed (see :func:`meldkit.methods.sce_fused.supports`), fused kernels
  (:mod:`meldkit.methods.kernels_sce`) make up to four passes over the inputs as stored and do
  all per-element work in registers, bit for bit as the blocked path;
* otherwise (no numba, other devices), blocked passes of eager torch over blocks of
  :data:`BLOCK_ELEMENTS`: the variance's top-k cut-off by a radix select (two histogram
  passes; ties at the cut-off resolved in flat order, as :func:`top_k_mask` does), the
  energies, then the output;
* float64 inputs: the whole tensor at once in float64.

The energies ``mean(δ_i²)`` are float64 sums of float64 squares, in a fixed order that
neither the block size nor the thread count changes (:func:`energy_weights`).

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

from meldkit.methods import kernel_runner, sce_fused
from meldkit.methods.inputs import non_base, output_dtype, param_float
from meldkit.methods.registry import MergeContext
from meldkit.methods.sparsify import top_k_mask
from meldkit.methods.task_vectors import agreement


def _variance(deltas: Sequence[torch.Tensor]) -> torch.Tensor:
    """Population variance across models, by Welford's update (exactly 0 where all agree)."""
    mean = torch.zeros_like(deltas[0])
    m2 = torch.zeros_like(deltas[0])
    for k, d in enumerate(deltas, start=1):
        diff = d - mean
        mean.add_(diff, alpha=1.0 / k)
        m2.addcmul_(diff, d - mean)
    return m2.div_(len(deltas))


# Elements per block of the blocked passes (float32 inputs).
BLOCK_ELEMENTS = 1 << 20

# Elements per chunk of the energy sums (the fused kernels' chunk): each chunk's squares are
# summed in 16 lanes, element i of the chunk into lane i % 16, one by one in order.
CHUNK = 1 << 14
LANES = 16


def _add_lanes(lanes: torch.Tensor, start: int, d: torch.Tensor) -> None:
    """Add the squares of ``d`` (the flat elements ``start, start + 1, ...``) into ``lanes``
    (chunks x LANES, float64), continuing each lane's running sum in element order (cumsum adds
    one by one) as the fused kernels do."""
    sq = d.double().square()  # exact: a float32's square fits a float64
    end = start + sq.numel()
    pos = start
    while pos < end:
        c, off = divmod(pos, CHUNK)
        if off == 0 and end - pos >= CHUNK:  # whole chunks, not started yet: from 0
            full = (end - pos) // CHUNK
            rows = sq[pos - start:pos - start + full * CHUNK].view(full, CHUNK // LANES, LANES)
            lanes[c:c + full] = rows.cumsum(1)[:, -1]
            pos += full * CHUNK
            continue
        stop = min(end, (c + 1) * CHUNK)
        # Pad with zeros to whole rows of lanes (adding +0 to a sum of squares changes nothing).
        piece = torch.nn.functional.pad(sq[pos - start:stop - start],
                                        (off % LANES, -(stop - c * CHUNK) % LANES))
        lanes[c] = torch.cat([lanes[c:c + 1], piece.view(-1, LANES)]).cumsum(0)[-1]
        pos = stop


def energy_weights(lanes: Any, n: int) -> torch.Tensor:
    """ω (float32) from the per-chunk energy lane sums (chunks x models x LANES, float64):
    each chunk's lanes summed in order, then the chunks in order (cumsum adds one by one),
    divided by ``n``; uniform when the energies sum (nearly) to zero."""
    lanes = torch.as_tensor(lanes, dtype=torch.float64)
    per_chunk = lanes.cumsum(-1)[..., -1]
    energy = per_chunk.cumsum(0)[-1]  # there is always a chunk, if empty
    energies = torch.tensor([float(v) / max(n, 1) for v in energy], dtype=torch.float32)
    total = float(energies.sum())
    if abs(total) < 1e-6:
        return torch.full_like(energies, 1.0 / len(energies))
    return energies / total


def merge(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: MergeContext,
) -> torch.Tensor:
    """Merge one tensor: the base and any number of other models (paths: see the module
    docstring)."""
    assert base_index is not None, "sce needs a base model"
    others = non_base(inputs, base_index, per_input)
    if not others:
        return inputs[base_index]
    topk = param_float(shared, "select_topk", 1.0)
    if any(x.dtype == torch.float64 for x in inputs):
        return _whole_tensor(inputs[base_index], [o.tensor for o in others], topk)
    out_dtype = output_dtype(inputs, ctx.out_dtype)
    if sce_fused.supports(inputs, ctx):
        return sce_fused.merge_sce_fused(inputs[base_index], [o.tensor for o in others], topk, out_dtype)
    return _blocked(inputs[base_index], [o.tensor for o in others], topk, out_dtype)


def _blocked(base_t: torch.Tensor, others_t: list[torch.Tensor], topk: float,
             out_dtype: torch.dtype) -> torch.Tensor:
    n = base_t.numel()
    device = base_t.device
    flat_base = base_t.reshape(-1)
    flat_others = [x.reshape(-1) for x in others_t]
    blocks = [(s, min(n, s + BLOCK_ELEMENTS)) for s in range(0, n, BLOCK_ELEMENTS)] or [(0, 0)]

    def deltas(s: int, e: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        b = flat_base[s:e].float()
        return b, [x[s:e].float() - b for x in flat_others]

    def keys(ds: list[torch.Tensor]) -> torch.Tensor:
        # |var| as int32 bits order like the values (var >= 0; abs folds -0.0 into 0).
        return _variance(ds).abs_().view(torch.int32)

    select = 0 < topk < 1
    keep_all = topk >= 1
    cut, drop_ties, k = 0, 0, 0
    if select:
        # Histograms and sums stay on the inputs' device (a GPU's blocks are there).
        high = torch.zeros(1 << 15, dtype=torch.int64, device=device)
        nonzero = 0
        for s, e in blocks:
            key = keys(deltas(s, e)[1])
            nonzero += int(torch.count_nonzero(key))
            high += torch.bincount(key >> 16, minlength=1 << 15)
        k = int(nonzero * topk)
        lo = n - k  # keep the k largest: the lo-th smallest is the cut-off
        if k == n:
            keep_all = True
        elif k > 0:
            cum_high = high.cumsum(0).cpu()
            digit = int(torch.searchsorted(cum_high, torch.tensor(lo)))
            before = int(cum_high[digit - 1]) if digit else 0
            low = torch.zeros(1 << 16, dtype=torch.int64, device=device)
            for s, e in blocks:
                key = keys(deltas(s, e)[1])
                low += torch.bincount(key[(key >> 16) == digit] & 0xFFFF, minlength=1 << 16)
            cum_low = low.cumsum(0).cpu()
            low_digit = int(torch.searchsorted(cum_low, torch.tensor(lo - before)))
            below = before + (int(cum_low[low_digit - 1]) if low_digit else 0)
            cut = (digit << 16) | low_digit
            drop_ties = (n - below) - k  # keys >= cut number n - below; the first extra go

    seen_ties = 0

    def kept(s: int, e: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The block's base and masked deltas; call once per block, in order, per pass."""
        nonlocal seen_ties
        b, ds = deltas(s, e)
        if keep_all:
            return b, ds
        if not select or k == 0:
            return b, [d.zero_() for d in ds]
        key = keys(ds)
        tie = key == cut
        ordinal = torch.cumsum(tie, 0) - 1 + seen_ties
        seen_ties += int(tie.sum())
        keep = (key > cut) | (tie & (ordinal >= drop_ties))
        return b, [d.mul_(keep) for d in ds]

    lanes = torch.zeros(kernel_runner.chunk_count(n, CHUNK), len(flat_others), LANES, dtype=torch.float64,
                        device=device)
    for s, e in blocks:
        _, ds = kept(s, e)
        for i, d in enumerate(ds):
            _add_lanes(lanes[:, i], s, d)
    omega = energy_weights(lanes, n)

    out = torch.empty(n, dtype=out_dtype, device=device)
    seen_ties = 0
    for s, e in blocks:
        b, ds = kept(s, e)
        out[s:e] = _mix(b, ds, omega).to(out_dtype)
    return out.reshape(base_t.shape)


def _mix(base: torch.Tensor, deltas: list[torch.Tensor], omega: torch.Tensor) -> torch.Tensor:
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


def _whole_tensor(base: torch.Tensor, others: list[torch.Tensor], topk: float) -> torch.Tensor:
    base = base.to(torch.float64)
    deltas = [x.to(torch.float64) - base for x in others]
    if topk < 1:
        if topk <= 0:
            keep = torch.zeros_like(base, dtype=torch.bool)
        else:
            var = _variance(deltas)
            k = int(int(torch.count_nonzero(var)) * topk)
            keep = top_k_mask(var, k)
            del var
        for d in deltas:
            d.mul_(keep)
    energies = torch.stack([(d * d).mean() for d in deltas])  # (n_models,)
    total = float(energies.sum())
    if abs(total) < 1e-6:
        omega = torch.full_like(energies, 1.0 / len(deltas))
    else:
        omega = energies / total
    return _mix(base, deltas, omega)
