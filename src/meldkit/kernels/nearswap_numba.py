"""Fused CPU kernel (numba) for nearswap (:mod:`meldkit.methods.nearswap`): one pass over the
stored inputs, writing the output in its final dtype.

Import through :func:`meldkit.kernels.runner.load` (``load("nearswap_numba")``), which returns
None when numba is not installed.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from meldkit.kernels.primitives import load, store


@njit(nogil=True, cache=True, error_model="numpy")
def nearswap(x, base, s, e, t, min_distance, out, out_bf16):
    """Elements ``s <= i < e``. As eager torch: ``t / d`` is ``(1 / d) · t`` (torch's reflected
    division), and the clamps let NaN through."""
    one = np.float32(1.0)
    for i in range(s, e):
        b = load(base, i)
        o = load(x, i)
        d = abs(b - o)
        d = min_distance if d < min_distance else d
        w = (one / d) * t
        w = np.float32(0.0) if w < 0 else w
        w = one if w > one else w
        store(out, out_bf16, i, np.float32(o * w + b * (one - w)))
    return out
