"""The fast path of nearswap: one fused numba pass over the inputs as stored
(:mod:`meldkit.kernels.nearswap_numba`), bit for bit the reference's arithmetic, writing
float32 or bfloat16 directly."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from meldkit.kernels import runner
from meldkit.methods.inputs import base_and_other, output_dtype
from meldkit.methods.nearswap import MIN_DISTANCE
from meldkit.methods.registry import FastPath, MergeContext

__all__ = ["nearswap"]


def _supports(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: MergeContext,
) -> bool:
    return (
        len(inputs) == 2
        and runner.load("nearswap_numba") is not None
        and runner.cpu_tensors(inputs, ctx.device)
    )


def _nearswap(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: MergeContext,
) -> torch.Tensor:
    module = runner.load("nearswap_numba")
    pair = base_and_other(inputs, base_index, "nearswap")
    assert module is not None and pair is not None
    base, other = pair
    out = runner.output_buffer(base.numel(), output_dtype(inputs, ctx.out_dtype))
    stored_x, stored_b = runner.stored_arrays([other, base])
    runner.parallel(
        module.nearswap,
        base.numel(),
        stored_x,
        stored_b,
        np.float32(float(shared["t"])),
        np.float32(MIN_DISTANCE),
        runner.as_numpy(out),
        out.dtype == torch.bfloat16,
    )
    return out.reshape(base.shape)


nearswap = FastPath(_supports, _nearswap)
