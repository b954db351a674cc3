"""The fast path of ram and ramplus_tl: fused numba passes over the inputs as stored
(:mod:`meldkit.kernels.ram_numba`), the reference's float32 arithmetic bit for bit, writing
float32 or bfloat16 directly.

ram is one pass; ramplus_tl two: the per-chunk overlap counts (integers, summed exactly),
then the output with the boosts of :func:`meldkit.methods.ramplus_tl.boosts`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from meldkit.kernels import runner
from meldkit.methods.inputs import non_base, output_dtype, param_float
from meldkit.methods.ramplus_tl import boosts
from meldkit.methods.registry import FastPath, MergeContext

__all__ = ["ram", "ramplus_tl"]


def _supports(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: MergeContext,
) -> bool:
    return (
        base_index is not None
        and len(inputs) > 1
        and runner.load("ram_numba") is not None
        and runner.cpu_tensors(inputs, ctx.device)
    )


def _stored(
    inputs: Sequence[torch.Tensor], base_index: int | None, per_input: Sequence[Mapping[str, Any]]
) -> tuple[torch.Tensor, tuple[np.ndarray, ...], np.ndarray]:
    """The base tensor, and the others and the base as the kernels read them (one stored dtype)."""
    assert base_index is not None
    base = inputs[base_index]
    others = [o.tensor for o in non_base(inputs, base_index, per_input)]
    *xs, b = runner.stored_arrays([*others, base])
    return base, tuple(xs), b


def _ram(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: MergeContext,
) -> torch.Tensor:
    module = runner.load("ram_numba")
    assert module is not None
    base, xs, b = _stored(inputs, base_index, per_input)
    epsilon = param_float(shared, "epsilon", 1e-5)
    out = runner.output_buffer(base.numel(), output_dtype(inputs, ctx.out_dtype))
    runner.parallel(
        module.ram_mix,
        runner.chunk_count(b.shape[0], module.CHUNK),
        xs,
        b,
        np.float32(epsilon),
        runner.as_numpy(out),
        out.dtype == torch.bfloat16,
    )
    return out.reshape(base.shape)


def _ramplus_tl(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: MergeContext,
) -> torch.Tensor:
    module = runner.load("ram_numba")
    assert module is not None
    base, xs, b = _stored(inputs, base_index, per_input)
    epsilon = param_float(shared, "epsilon", 1e-5)
    r = param_float(shared, "r", 0.1)
    alpha = param_float(shared, "alpha", 0.2)
    n_chunks = runner.chunk_count(b.shape[0], module.CHUNK)
    counts = np.zeros((n_chunks, len(xs), 2), dtype=np.int64)
    eps = np.float32(epsilon)
    runner.parallel(module.ramplus_counts, n_chunks, xs, b, eps, counts)
    totals = counts.sum(axis=0)
    lams = boosts([int(t) for t in totals[:, 0]], [int(t) for t in totals[:, 1]], r, alpha, epsilon)
    out = runner.output_buffer(base.numel(), output_dtype(inputs, ctx.out_dtype))
    runner.parallel(
        module.ramplus_mix,
        n_chunks,
        xs,
        b,
        eps,
        np.array(lams, dtype=np.float32),
        runner.as_numpy(out),
        out.dtype == torch.bfloat16,
    )
    return out.reshape(base.shape)


ram = FastPath(_supports, _ram)
ramplus_tl = FastPath(_supports, _ramplus_tl)
