"""Fused CPU kernels (numba) for RAM and RAM+ (tensor-local): one pass per statistic.

With ``δ_j = x_j - b``, ``a_j = |δ_j| > epsilon`` and ``c = Σ_j a_j`` per element, the eager
path (:mod:`meldkit.methods.ram`, :mod:`meldkit.methods.ramplus_tl`) makes one full-size pass
and temporary per torch operation. Here every element's ``δ_j``, ``a_j`` and ``c`` stay in
cache-resident chunk buffers; inputs are read as stored (bfloat16 bits or float32). The float32
operations are the eager path's, in the same order and without fast-math, so both give the
same bits (the tests compare them).

Import through :func:`meldkit.kernels.runner.load` (``load("ram_numba")``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from meldkit.kernels.primitives import CHUNK, load, store


@njit(inline="always")
def _active(d, eps):
    return np.float32(1.0) if abs(d) > eps else np.float32(0.0)


@njit(inline="always")
def _count_active(xs, base, s, size, eps, count):
    """``count[k] = c`` for the elements ``s + k``, summed in model order as the eager path."""
    count[:size] = 0
    for j in range(len(xs)):
        x = xs[j]
        for k in range(size):
            count[k] = count[k] + _active(load(x, s + k) - load(base, s + k), eps)


@njit(nogil=True, cache=True, error_model="numpy")
def ram_mix(xs, base, c0, c1, eps, out, out_bf16):
    """RAM for chunks ``c0 <= c < c1``: ``b + (Σ_j δ_j a_j) / max(c, 1)``; ``out`` is float32,
    or bfloat16 bits (rounded to nearest even) when ``out_bf16``."""
    n = base.shape[0]
    count = np.empty(CHUNK, dtype=np.float32)
    total = np.empty(CHUNK, dtype=np.float32)
    for c in range(c0, c1):
        s, e = c * CHUNK, min(n, (c + 1) * CHUNK)
        size = e - s
        _count_active(xs, base, s, size, eps, count)
        total[:size] = 0
        for j in range(len(xs)):
            x = xs[j]
            for k in range(size):
                d = load(x, s + k) - load(base, s + k)
                total[k] = total[k] + d * _active(d, eps)
        for k in range(size):
            store(
                out,
                out_bf16,
                s + k,
                np.float32(load(base, s + k) + total[k] / max(count[k], np.float32(1.0))),
            )
    return out


@njit(nogil=True, cache=True, error_model="numpy")
def ramplus_counts(xs, base, c0, c1, eps, counts):
    """``counts[c, j] = (#(a_j ∧ c == 1), #(a_j ∧ c > 1))`` in chunk ``c``, for ``c0 <= c < c1``."""
    n = base.shape[0]
    count = np.empty(CHUNK, dtype=np.float32)
    for c in range(c0, c1):
        s, e = c * CHUNK, min(n, (c + 1) * CHUNK)
        size = e - s
        _count_active(xs, base, s, size, eps, count)
        for j in range(len(xs)):
            x = xs[j]
            mine = 0
            common = 0
            for k in range(size):
                a = abs(load(x, s + k) - load(base, s + k)) > eps
                mine += 1 if a and count[k] == 1 else 0
                common += 1 if a and count[k] > 1 else 0
            counts[c, j, 0] = mine
            counts[c, j, 1] = common
    return counts


@njit(nogil=True, cache=True, error_model="numpy")
def ramplus_mix(xs, base, c0, c1, eps, lams, out, out_bf16):
    """RAM+ for chunks ``c0 <= c < c1``:
    ``b + Σ_j (δ_j [a_j ∧ c == 1]) λ_j + (Σ_j δ_j [a_j ∧ c > 1]) / max(c, 1)``."""
    n = base.shape[0]
    count = np.empty(CHUNK, dtype=np.float32)
    unique = np.empty(CHUNK, dtype=np.float32)
    overlap = np.empty(CHUNK, dtype=np.float32)
    for c in range(c0, c1):
        s, e = c * CHUNK, min(n, (c + 1) * CHUNK)
        size = e - s
        _count_active(xs, base, s, size, eps, count)
        unique[:size] = 0
        overlap[:size] = 0
        for j in range(len(xs)):
            x = xs[j]
            lam = lams[j]
            for k in range(size):
                d = load(x, s + k) - load(base, s + k)
                a = abs(d) > eps
                only = np.float32(1.0) if a and count[k] == 1 else np.float32(0.0)
                shared = np.float32(1.0) if a and count[k] > 1 else np.float32(0.0)
                unique[k] = unique[k] + (d * only) * lam
                overlap[k] = overlap[k] + d * shared
        for k in range(size):
            v = np.float32(load(base, s + k) + unique[k])
            store(out, out_bf16, s + k, np.float32(v + overlap[k] / max(count[k], np.float32(1.0))))
    return out
