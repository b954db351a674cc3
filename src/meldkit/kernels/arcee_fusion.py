"""The fast path of arcee_fusion: two fused numba passes over the inputs as stored
(:mod:`meldkit.kernels.arcee_fusion_numba`).

1. :func:`row_kl` computes each row's KL in float64 from float32 exponentials (the reference
   takes float64 softmaxes; the two agree to about 1e-6 relative, the documented tolerance)
   and, while the row is in cache, the importance at the sampled positions: the same rows and
   columns as :func:`meldkit.methods.arcee_fusion.sample_index` draws, in the same order;
2. the quartiles select the same order statistics as the reference (an exact selection);
3. ``keep_important`` writes ``b + (x - b) · [|x - b| · kl >= threshold]`` in float32 or
   bfloat16 directly.

Float64 inputs, other devices and no numba take the reference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from meldkit.kernels import runner
from meldkit.methods.arcee_fusion import (
    KL_EPS,
    SAMPLE_SIZE,
    quartile_ranks,
    row_layout,
    row_starts,
    sample_keys,
)
from meldkit.methods.inputs import base_and_other, output_dtype
from meldkit.methods.registry import FastPath, MergeContext

__all__ = ["arcee_fusion", "sample_starts", "quartiles"]


def _supports(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: MergeContext,
) -> bool:
    return (
        len(inputs) == 2
        and inputs[0].numel() > 0
        and runner.load("arcee_fusion_numba") is not None
        and all(x.dtype != torch.float64 for x in inputs)
        and runner.cpu_tensors(inputs, ctx.device)
    )


def sample_starts(key: int, rows: int, size: int) -> np.ndarray:
    """:func:`meldkit.methods.arcee_fusion.sample_starts`, counted by the kernel in parallel
    ranges (the counts do not depend on them)."""
    module = runner.load("arcee_fusion_numba")
    assert module is not None
    parts = runner.ranges(size)
    counts = np.zeros((len(parts), rows), dtype=np.int64)
    runner.run_all(
        [
            (module.count_sample_rows, (*runner.key_halves(key), a, b, rows, counts[t]))
            for t, (a, b) in enumerate(parts)
        ]
    )
    return row_starts(counts.sum(axis=0))


def quartiles(sample: torch.Tensor) -> torch.Tensor:
    """:func:`meldkit.methods.arcee_fusion.quartiles` of a float32 sample, the order statistics
    selected by the kernel's radix selection (the same values as numpy's partition)."""
    module = runner.load("arcee_fusion_numba")
    assert module is not None
    if sample.numel() == 0 or bool(torch.isnan(sample).any()):
        return torch.quantile(sample, torch.tensor([0.25, 0.5, 0.75], dtype=sample.dtype))
    ranks, below, above = quartile_ranks(sample.numel(), sample.dtype)
    wanted = torch.cat([below, above]).numpy()
    picked = torch.from_numpy(
        module.order_statistics(sample.numpy(), wanted, np.empty(6, np.float32))
    )
    return torch.lerp(picked[:3], picked[3:], ranks - below)


def _arcee_fusion(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: MergeContext,
) -> torch.Tensor:
    module = runner.load("arcee_fusion_numba")
    pair = base_and_other(inputs, base_index, "arcee_fusion")
    assert module is not None and pair is not None
    base, other = pair
    n = base.numel()
    rows, length = row_layout(base)
    stored_b, stored_x = runner.stored_arrays([base, other])

    # Pass 1: each row's KL and the importance at the sample (every position when small).
    every = n <= SAMPLE_SIZE
    size = n if every else SAMPLE_SIZE
    if every:
        starts, c0, c1 = np.zeros(rows + 1, dtype=np.int64), *runner.key_halves(0)
    else:
        keys = sample_keys(ctx)
        starts, (c0, c1) = sample_starts(keys[0], rows, size), runner.key_halves(keys[1])
    kl = np.empty(rows, dtype=np.float64)
    sample = np.empty(size, dtype=np.float32)
    runner.parallel(
        module.row_kl, rows, stored_x, stored_b, length, KL_EPS, kl, starts, c0, c1, every, sample
    )
    q1, median, q3 = quartiles(torch.from_numpy(sample))
    threshold = median + 1.5 * (q3 - q1)

    # Pass 2: out = b + (x - b) · [|x - b| · kl >= threshold].
    out = runner.output_buffer(n, output_dtype(inputs, ctx.out_dtype))
    kl32 = torch.from_numpy(kl).to(torch.float32).numpy()
    runner.parallel(
        module.keep_important,
        rows,
        stored_x,
        stored_b,
        length,
        kl32,
        np.float32(threshold.item()),
        runner.as_numpy(out),
        out.dtype == torch.bfloat16,
    )
    return out.reshape(base.shape)


arcee_fusion = FastPath(_supports, _arcee_fusion)
