"""sce on the CPU with fused kernels (:mod:`meldkit.methods.kernels_sce`).

:func:`merge_sce_fused` computes exactly what the blocked eager path of
:mod:`meldkit.methods.sce` computes (same operations and rounding, same tie rule, the same
float64 energy sums) but never makes a float32 copy of an input or a delta. For ``0 <
select_topk < 1`` it makes four passes over the stored inputs, every one computing the
variance key per element in registers:

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

from collections.abc import Sequence
from functools import cache
from types import ModuleType

import numpy as np
import torch

from meldkit.methods import kernel_runner
from meldkit.methods.registry import MergeContext

__all__ = ["kernels", "available", "supports", "torch_fma", "merge_sce_fused"]

_HIGH = 1 << 15  # keys have a 0 sign bit: 15 high-digit bits
_LOW = 1 << 16


def kernels() -> ModuleType | None:
    """The numba kernels module, or None when numba cannot be imported."""
    return kernel_runner.load("kernels_sce")


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
    return available() and kernel_runner.cpu_tensors(inputs, ctx.device)


def _select(module: ModuleType, xs: tuple[np.ndarray, ...], base: np.ndarray, topk: float,
            fused: bool) -> tuple[int, int, int]:
    """``(mode, cut, drop)``: the masking mode, and for SELECT the cut-off key and how many of
    the elements tied at it are dropped (the first ones in flat order), as sce._blocked."""
    n = base.shape[0]
    if topk >= 1:
        return module.KEEP_ALL, 0, 0
    if not 0 < topk < 1:
        return module.ZERO, 0, 0
    parts = kernel_runner.ranges(n)
    high = kernel_runner.zeroed_scratch("sce_high", (len(parts), _HIGH))
    zeros = np.zeros((len(parts), 1), dtype=np.int64)
    kernel_runner.run_all([(module.hist_high, (xs, base, a, b, fused, high[p], zeros[p]))
                           for p, (a, b) in enumerate(parts)])
    k = int((n - int(zeros.sum())) * topk)
    if k == n:
        return module.KEEP_ALL, 0, 0
    if k <= 0:
        return module.ZERO, 0, 0
    lo = n - k  # keep the k largest: the lo-th smallest is the cut-off
    cum_high = high.sum(axis=0).cumsum()
    digit = int(np.searchsorted(cum_high, lo))
    before = int(cum_high[digit - 1]) if digit else 0
    low = kernel_runner.zeroed_scratch("sce_low", (len(parts), _LOW))
    kernel_runner.run_all([(module.hist_low, (xs, base, a, b, fused, digit, low[p]))
                           for p, (a, b) in enumerate(parts)])
    cum_low = low.sum(axis=0).cumsum()
    low_digit = int(np.searchsorted(cum_low, lo - before))
    below = before + (int(cum_low[low_digit - 1]) if low_digit else 0)
    return module.SELECT, (digit << 16) | low_digit, (n - below) - k


def merge_sce_fused(base_t: torch.Tensor, others_t: Sequence[torch.Tensor], topk: float,
                    out_dtype: torch.dtype) -> torch.Tensor:
    """sce of ``others_t`` over ``base_t`` (see the module docstring), in ``out_dtype``."""
    from meldkit.methods.sce import CHUNK, LANES, energy_weights

    module = kernels()
    fused = torch_fma()
    assert module is not None and fused is not None and module.CHUNK == CHUNK and module.LANES == LANES
    shape = base_t.shape
    n = base_t.numel()
    m = len(others_t)
    *stored, base = kernel_runner.stored_arrays([*others_t, base_t])
    xs = tuple(stored)
    n_chunks = kernel_runner.chunk_count(n, CHUNK)

    mode, cut, drop = _select(module, xs, base, topk, fused)
    cut_u = np.uint32(cut)
    lanes = np.zeros((n_chunks, 2, m, LANES), dtype=np.float64)
    ties = np.zeros(n_chunks, dtype=np.int64)
    first = np.zeros(n_chunks, dtype=np.int64)
    if mode != module.ZERO:
        kernel_runner.parallel(module.energy_lanes, n_chunks, xs, base, fused, mode, cut_u, lanes, ties)
    if mode == module.SELECT:
        first[1:] = np.cumsum(ties)[:-1]
    # Each chunk's lanes with its ties as the flat-order rule has them: all dropped (variant
    # 0), all kept (1), or, in the one chunk where the budget of drops runs out, redone.
    chosen = np.where((first >= drop)[:, None, None], lanes[:, 1], lanes[:, 0])
    if mode == module.SELECT:
        for c in np.flatnonzero((first < drop) & (first + ties > drop)):
            chosen[c] = 0
            module.energy_lanes_resolved(xs, base, int(c), fused, cut_u, drop, first[c], ties[c], chosen[c])
    omega = energy_weights(chosen, n).numpy()

    out = kernel_runner.output_buffer(n, out_dtype)
    kernel_runner.parallel(module.mix, n_chunks, xs, base, fused, mode, cut_u, drop, first, ties, omega,
                           kernel_runner.as_numpy(out), out.dtype == torch.bfloat16)
    return (out if out.dtype == out_dtype else out.to(out_dtype)).reshape(shape)
