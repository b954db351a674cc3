"""The fast path of sce: fused numba kernels (:mod:`meldkit.kernels.sce_numba`).

:func:`merge_sce_fused` computes what :func:`meldkit.methods.sce.sce` computes (the same
float32 operations and rounding, the same selection and tie rule) but never makes a float32
copy of an input or a delta. The one difference is the order of the float64 energy sums: each
fixed chunk of :data:`CHUNK` elements sums its squares in :data:`LANES` lanes (element ``i``
into lane ``i % LANES``), then lanes and chunks are added in order; so ω can differ from the
reference's in its last float32 bits (2 ulps measured), and float32 outputs by a few ulps
where it does (4 measured; bf16 outputs by one ulp): the tolerances tests/kernels/test_sce.py
pins. For ``0 < select_topk < 1`` it makes four passes
over the stored inputs, every one computing the variance key per element in registers:

1. a histogram of the key's high 16 bits and the number of zero keys (so ``k``);
2. a histogram of the low 16 bits within the cut-off's high digit: the exact cut-off and how
   many of the tied elements to drop (the first ones, in flat order);
3. per fixed-size chunk, the float64 energy lane sums with the ties at the cut-off both
   dropped and kept, and the number of ties: once the chunks' tie counts are known, each
   chunk takes the right variant, and the one chunk where the tie budget runs out is redone;
4. the mix, written directly in the output dtype.

With ``select_topk >= 1`` (or ``k = n``) only the last two passes run, without keys; with
``select_topk <= 0`` (or ``k = 0``) only the mix. Work is split over torch's thread count
in fixed chunks, so results do not depend on it.

torch's CPU kernels compute ``add(alpha=)`` and ``addcmul`` (used by the variance and the
mix) with a fused multiply-add where they vectorize with FMA. :func:`torch_fma` probes which
rounding torch uses here; the kernels do the same. When the probe is inconclusive, or numba is
missing, or for inputs the kernels do not read (float64, other devices), the eager path runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from types import ModuleType
from typing import Any

import numpy as np
import torch

from meldkit.kernels import runner
from meldkit.methods.inputs import non_base, output_dtype, param_float
from meldkit.methods.registry import FastPath, MergeContext

__all__ = [
    "kernels",
    "available",
    "supports",
    "torch_fma",
    "energy_weights",
    "merge_sce_fused",
    "sce",
]

# Elements per chunk of the energy sums, and lanes per chunk (the kernels' layout).
CHUNK = 1 << 14
LANES = 16

_HIGH = 1 << 15  # keys have a 0 sign bit: 15 high-digit bits
_LOW = 1 << 16


def kernels() -> ModuleType | None:
    """The numba kernels module, or None when numba cannot be imported."""
    return runner.load("sce_numba")


@cache
def torch_fma() -> bool | None:
    """Whether torch rounds ``add(alpha=)`` and ``addcmul`` once (a fused multiply-add) on
    float32 CPU tensors: True or False, or None when the two ops or parts of a tensor (the
    vectorized body and the tail) disagree."""
    n = 67  # several vector widths and a tail
    a = torch.full((n,), 1 + 2**-12)
    one = torch.full((n,), -1.0)
    # (1 + 2^-12)² - 1 = 2^-11 + 2^-24 rounded once; rounding the product first loses 2^-24.
    fused, split = 2**-11 + 2**-24, 2**-11
    results = [one.clone().add_(a, alpha=1 + 2**-12), one.clone().addcmul_(a, a)]
    if all(bool((r == fused).all()) for r in results):
        return True
    if all(bool((r == split).all()) for r in results):
        return False
    return None


def available() -> bool:
    """Whether the fused kernels can run here (numba installed, torch's rounding known)."""
    return kernels() is not None and torch_fma() is not None


def supports(inputs: Sequence[torch.Tensor], ctx: MergeContext) -> bool:
    """Whether :func:`merge_sce_fused` covers this call."""
    return available() and runner.cpu_tensors(inputs, ctx.device)


def _select(
    module: ModuleType, xs: tuple[np.ndarray, ...], base: np.ndarray, topk: float, fused: bool
) -> tuple[int, int, int]:
    """``(mode, cut, drop)``: the masking mode, and for SELECT the cut-off key and how many of
    the elements tied at it are dropped (the first ones in flat order), as sce.select."""
    n = base.shape[0]
    if topk >= 1:
        return module.KEEP_ALL, 0, 0
    if not 0 < topk < 1:
        return module.ZERO, 0, 0
    parts = runner.ranges(n)
    high = runner.zeroed_scratch("sce_high", (len(parts), _HIGH))
    zeros = np.zeros((len(parts), 1), dtype=np.int64)
    runner.run_all(
        [
            (module.hist_high, (xs, base, a, b, fused, high[p], zeros[p]))
            for p, (a, b) in enumerate(parts)
        ]
    )
    k = int((n - int(zeros.sum())) * topk)
    if k == n:
        return module.KEEP_ALL, 0, 0
    if k <= 0:
        return module.ZERO, 0, 0
    lo = n - k  # keep the k largest: the lo-th smallest is the cut-off
    cum_high = high.sum(axis=0).cumsum()
    digit = int(np.searchsorted(cum_high, lo))
    before = int(cum_high[digit - 1]) if digit else 0
    low = runner.zeroed_scratch("sce_low", (len(parts), _LOW))
    runner.run_all(
        [
            (module.hist_low, (xs, base, a, b, fused, digit, low[p]))
            for p, (a, b) in enumerate(parts)
        ]
    )
    cum_low = low.sum(axis=0).cumsum()
    low_digit = int(np.searchsorted(cum_low, lo - before))
    below = before + (int(cum_low[low_digit - 1]) if low_digit else 0)
    return module.SELECT, (digit << 16) | low_digit, (n - below) - k


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


def merge_sce_fused(
    base_t: torch.Tensor, others_t: Sequence[torch.Tensor], topk: float, out_dtype: torch.dtype
) -> torch.Tensor:
    """sce of ``others_t`` over ``base_t`` (see the module docstring), in ``out_dtype``."""
    module = kernels()
    fused = torch_fma()
    assert (
        module is not None and fused is not None and module.CHUNK == CHUNK and module.LANES == LANES
    )
    shape = base_t.shape
    n = base_t.numel()
    m = len(others_t)
    *stored, base = runner.stored_arrays([*others_t, base_t])
    xs = tuple(stored)
    n_chunks = runner.chunk_count(n, CHUNK)

    mode, cut, drop = _select(module, xs, base, topk, fused)
    cut_u = np.uint32(cut)
    lanes = np.zeros((n_chunks, 2, m, LANES), dtype=np.float64)
    ties = np.zeros(n_chunks, dtype=np.int64)
    first = np.zeros(n_chunks, dtype=np.int64)
    if mode != module.ZERO:
        runner.parallel(module.energy_lanes, n_chunks, xs, base, fused, mode, cut_u, lanes, ties)
    if mode == module.SELECT:
        first[1:] = np.cumsum(ties)[:-1]
    # Each chunk's lanes with its ties as the flat-order rule has them: all dropped (variant
    # 0), all kept (1), or, in the one chunk where the budget of drops runs out, redone.
    chosen = np.where((first >= drop)[:, None, None], lanes[:, 1], lanes[:, 0])
    if mode == module.SELECT:
        for c in np.flatnonzero((first < drop) & (first + ties > drop)):
            chosen[c] = 0
            module.energy_lanes_resolved(
                xs, base, int(c), fused, cut_u, drop, first[c], ties[c], chosen[c]
            )
    omega = energy_weights(chosen, n).numpy()

    out = runner.output_buffer(n, out_dtype)
    runner.parallel(
        module.mix,
        n_chunks,
        xs,
        base,
        fused,
        mode,
        cut_u,
        drop,
        first,
        ties,
        omega,
        runner.as_numpy(out),
        out.dtype == torch.bfloat16,
    )
    return (out if out.dtype == out_dtype else out.to(out_dtype)).reshape(shape)


def _supports(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: MergeContext,
) -> bool:
    return base_index is not None and len(inputs) > 1 and supports(inputs, ctx)


def _sce(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: MergeContext,
) -> torch.Tensor:
    assert base_index is not None
    others = [o.tensor for o in non_base(inputs, base_index, per_input)]
    topk = param_float(shared, "select_topk", 1.0)
    return merge_sce_fused(inputs[base_index], others, topk, output_dtype(inputs, ctx.out_dtype))


sce = FastPath(_supports, _sce)
