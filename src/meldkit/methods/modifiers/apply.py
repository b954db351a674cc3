"""The modifiers' math (:mod:`meldkit.methods.modifiers`), applied by the engine around a
method: inputs rescaled before it, the result scaled after it. In the work dtype (float32,
float64 for float64 inputs), on the math device."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["apply_lines", "rescale_inputs", "squared_distance"]

# Elements per block when accumulating a squared norm in float64 (32 MB of float64 at most).
_NORM_BLOCK = 1 << 22


def apply_lines(merged: torch.Tensor, base: torch.Tensor, scale: float) -> torch.Tensor:
    """LiNeS: ``base + scale * (merged - base)``, as a new tensor (neither input is changed)."""
    return torch.lerp(base.to(merged.dtype), merged, scale)


def rescale_inputs(
    inputs: Sequence[torch.Tensor], base_index: int, factors: Sequence[float]
) -> list[torch.Tensor]:
    """Each non-base input ``x_t`` as ``base + factors[t] * (x_t - base)``; the base (and any
    input whose factor is 1) is passed through unchanged."""
    base = inputs[base_index]
    out: list[torch.Tensor] = []
    for i, (x, c) in enumerate(zip(inputs, factors)):
        out.append(x if i == base_index or c == 1.0 else torch.lerp(base, x.to(base.dtype), c))
    return out


def squared_distance(x: torch.Tensor, base: torch.Tensor) -> float:
    """``||x - base||^2``: the difference in float32 (float64 for float64 inputs), the sum of
    squares accumulated in float64, a block of elements at a time."""
    work = torch.float64 if torch.float64 in (x.dtype, base.dtype) else torch.float32
    flat_x, flat_b = x.reshape(-1), base.reshape(-1)  # (numel,)
    total = 0.0
    for start in range(0, flat_x.numel(), _NORM_BLOCK):
        stop = start + _NORM_BLOCK
        d = flat_x[start:stop].to(work) - flat_b[start:stop].to(work)
        total += float(torch.dot(d.double(), d.double()))
    return total
