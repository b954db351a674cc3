"""Fused CPU kernel (numba) for arcee_fusion's output: keep the other model's value where its
importance reaches the threshold.

``out = b + (x - b) · [|x - b| · kl[row] >= threshold]`` per element, reading the inputs as
stored (bfloat16 bits or float32) and writing float32 or bfloat16 (rounded to nearest even),
with the eager path's float32 operations in the same order (the tests compare the bits).

Import through :func:`meldkit.methods.kernel_runner.load` (``load("kernels_select")``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from meldkit.methods.kernels import _load, _to_bf16_bits


@njit(nogil=True, cache=True, error_model="numpy")
def keep_important(x, base, r0, r1, length, kl, threshold, out, out_bf16):
    """Rows ``r0 <= r < r1`` of the ``(rows, length)`` view."""
    for r in range(r0, r1):
        scale = kl[r]
        s = r * length
        for k in range(length):
            b = _load(base, s + k)
            d = _load(x, s + k) - b
            keep = np.float32(1.0) if abs(d) * scale >= threshold else np.float32(0.0)
            v = np.float32(b + d * keep)
            if out_bf16:
                out[s + k] = _to_bf16_bits(v)
            else:
                out[s + k] = v
    return out
