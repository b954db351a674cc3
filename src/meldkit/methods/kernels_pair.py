"""Fused CPU kernels (numba) for the methods of a base and one other model.

* :func:`keep_important`: arcee_fusion's output, ``b + (x - b) · [|x - b| · kl[row] >= thr]``;
* :func:`nearswap`: ``ω x + (1 - ω) b`` with ``ω = clamp(t / max(|b - x|, 1e-6), 0, 1)``.

They read the inputs as stored (bfloat16 bits or float32) and write float32 or bfloat16
(rounded to nearest even), with the eager path's float32 operations in the same order (the
tests compare the bits).

Import through :func:`meldkit.methods.kernel_runner.load` (``load("kernels_pair")``).
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
            _store(out, out_bf16, s + k, np.float32(b + d * keep))
    return out


@njit(inline="always")
def _store(out, out_bf16, i, v):
    if out_bf16:
        out[i] = _to_bf16_bits(v)
    else:
        out[i] = v


@njit(nogil=True, cache=True, error_model="numpy")
def nearswap(x, base, s, e, t, min_distance, out, out_bf16):
    """Elements ``s <= i < e``. As eager torch: ``t / d`` is ``(1 / d) · t`` (torch's reflected
    division), and the clamps let NaN through."""
    one = np.float32(1.0)
    for i in range(s, e):
        b = _load(base, i)
        o = _load(x, i)
        d = abs(b - o)
        d = min_distance if d < min_distance else d
        w = (one / d) * t
        w = np.float32(0.0) if w < 0 else w
        w = one if w > one else w
        _store(out, out_bf16, i, np.float32(o * w + b * (one - w)))
    return out
