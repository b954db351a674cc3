"""Fused CPU kernels (numba) for arcee_fusion (:mod:`meldkit.methods.arcee_fusion`).

* :func:`row_kl`: arcee_fusion's ``KL(softmax(x) + ε || softmax(b) + ε)`` of each row, in float64
  from float32 exponentials (the float32 formula loses most of its digits, see its docstring);
* :func:`keep_important`: arcee_fusion's output, ``b + (x - b) · [|x - b| · kl[row] >= thr]``;
* :func:`count_sample_rows`: how many of arcee_fusion's sampled positions fall in each row (the
  columns are drawn inside :func:`row_kl`), and :func:`order_statistics`: the few order
  statistics its quartiles interpolate.

They read the inputs as stored (bfloat16 bits or float32) and write float32 or bfloat16
(rounded to nearest even), with the eager path's float32 operations in the same order (the
tests compare the bits); :func:`row_kl` instead matches the eager path's float64 KL to about
1e-6 relative (numba has no vectorized exp or log, so it brings its own).

Import through :func:`meldkit.kernels.runner.load` (``load("arcee_fusion_numba")``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from meldkit.kernels.primitives import load, scaled_draw, store

# exp and log as polynomials that LLVM vectorizes (libm's are scalar calls). Constants from
# the usual Cody-Waite range reductions; accuracy is checked by the tests against numpy.
_LOG2E = np.float32(1.4426950408889634)
_LN2_HI_F = np.float32(0.693145751953125)  # ln 2 to 12 bits: k * hi is exact for |k| < 2**11
_LN2_LO_F = np.float32(1.4286068203094172e-06)
_LN2_HI = 6.93147180369123816490e-01  # ln 2 to 32 bits (fdlibm's split)
_LN2_LO = 1.90821492927058770002e-10
_SQRT2 = 1.4142135623730951
_EXPONENT_BASE = 4503599627370496.0 + 1023.0  # 2**52 plus the float64 exponent bias


@njit(inline="always")
def _exp32(t):
    """``e**t`` in float32 for ``t <= 0`` (within 2 ulp; below -87 gives about e**-87, NaN
    stays NaN): ``2**k · p(r)`` with ``t = k ln 2 + r``, ``|r| <= ln 2 / 2``."""
    t = np.float32(-87.0) if t < np.float32(-87.0) else t
    k = np.floor(t * _LOG2E + np.float32(0.5))
    r = (t - k * _LN2_HI_F) - k * _LN2_LO_F
    p = np.float32(1.0 / 5040)
    p = p * r + np.float32(1.0 / 720)
    p = p * r + np.float32(1.0 / 120)
    p = p * r + np.float32(1.0 / 24)
    p = p * r + np.float32(1.0 / 6)
    p = p * r + np.float32(0.5)
    p = p * r + np.float32(1.0)
    p = p * r + np.float32(1.0)
    scale = np.uint32(np.uint32(np.int32(k) + np.int32(127)) << np.uint32(23))
    return p * scale.view(np.float32)


@njit(inline="always")
def _log64(v):
    """``ln v`` in float64 for a positive normal ``v`` (within 4 ulp): ``v = 2**e · m`` with
    ``m`` in ``[√½, √2)``, and ``ln m = 2 atanh(s)``, ``s = (m - 1) / (m + 1)``, ``|s| < 0.172``.
    The exponent becomes a float through its bits (AVX2 has no int64 to float64 conversion)."""
    bits = np.float64(v).view(np.uint64)
    e = (
        np.uint64((bits >> np.uint64(52)) | np.uint64(0x4330000000000000)).view(np.float64)
        - _EXPONENT_BASE
    )
    m = np.uint64((bits & np.uint64(0xFFFFFFFFFFFFF)) | np.uint64(0x3FF0000000000000)).view(
        np.float64
    )
    big = m > _SQRT2
    m = m * 0.5 if big else m
    e = e + 1.0 if big else e
    f = m - 1.0
    s = f / (2.0 + f)
    s2 = s * s
    s4 = s2 * s2
    s8 = s4 * s4
    # 1 + s²/3 + s⁴/5 + ... + s²⁰/21 by Estrin's scheme (short dependency chains).
    c0 = 1.0 + s2 * (1.0 / 3.0)
    c1 = 1.0 / 5.0 + s2 * (1.0 / 7.0)
    c2 = 1.0 / 9.0 + s2 * (1.0 / 11.0)
    c3 = 1.0 / 13.0 + s2 * (1.0 / 15.0)
    c4 = 1.0 / 17.0 + s2 * (1.0 / 19.0)
    series = (c0 + s4 * c1) + s8 * ((c2 + s4 * c3) + s8 * (c4 + s4 * (1.0 / 21.0)))
    return e * _LN2_HI + (2.0 * s * series + e * _LN2_LO)


_PHI_SERIES_LIMIT = 1.0 / 16.0  # |d| up to which _phi_small is exact to about 1e-14


@njit(inline="always")
def _phi_small(d):
    """``(1 + d) log(1 + d) - d = d² Σ_{k>=0} (-d)^k / ((k + 1)(k + 2))``, through ``d^11``."""
    d2 = d * d
    d4 = d2 * d2
    c0 = 1.0 / 2.0 - d * (1.0 / 6.0)
    c1 = 1.0 / 12.0 - d * (1.0 / 20.0)
    c2 = 1.0 / 30.0 - d * (1.0 / 42.0)
    c3 = 1.0 / 56.0 - d * (1.0 / 72.0)
    c4 = 1.0 / 90.0 - d * (1.0 / 110.0)
    return d2 * ((c0 + d2 * c1) + d4 * ((c2 + d2 * c3) + d4 * c4))


@njit(inline="always")
def _sum64(values):
    """``Σ values`` in float64 with four interleaved accumulators (a fixed order)."""
    n = values.shape[0]
    a0 = a1 = a2 = a3 = 0.0
    k = 0
    while k + 4 <= n:
        a0 += np.float64(values[k])
        a1 += np.float64(values[k + 1])
        a2 += np.float64(values[k + 2])
        a3 += np.float64(values[k + 3])
        k += 4
    while k < n:
        a0 += np.float64(values[k])
        k += 1
    return (a0 + a1) + (a2 + a3)


@njit(nogil=True, cache=True, error_model="numpy")
def row_kl(x, base, r0, r1, length, eps, kl, starts, c0, c1, every, sample):
    """``kl[r] = Σ p log(p / q)`` with ``p = softmax(x_r) + eps``, ``q = softmax(b_r) + eps``,
    for rows ``r0 <= r < r1`` of the ``(rows, length)`` view; and, while the row is in cache,
    the importance ``|x - b| · float32(kl[r])`` of its sampled positions (float32, as the
    eager path). With ``every``, ``sample`` is the importance of every position in order;
    otherwise ``sample[k]`` for ``starts[r] <= k < starts[r + 1]`` is that of the column
    ``scaled_draw(c0, c1, k, length)`` of row ``r`` (see
    :func:`meldkit.methods.arcee_fusion.sample_index`).

    The exponentials are float32 (within 2 ulp); normalising, the ratio, its log and the sums
    are float64. This matters: for a fine-tune close to its base, ``p`` and ``q`` agree to
    about 1e-3, the sum cancels to second order, and the float32 formula (MergeKit's, and
    torch's float32 softmax) carries a median relative error of some 10%; here about 1e-6."""
    ex = np.empty(length, dtype=np.float32)
    eb = np.empty(length, dtype=np.float32)
    terms = np.empty(length, dtype=np.float64)
    gaps = np.empty(length, dtype=np.float64)
    for r in range(r0, r1):
        s = r * length
        for k in range(length):
            ex[k] = load(x, s + k)
            eb[k] = load(base, s + k)
        top_x, top_b = ex.max(), eb.max()
        for k in range(length):
            ex[k] = _exp32(ex[k] - top_x)
            eb[k] = _exp32(eb[k] - top_b)
        inv_x, inv_b = 1.0 / _sum64(ex), 1.0 / _sum64(eb)
        # Σ p log(p/q) = Σ q φ(d) with d = p/q - 1 and φ(d) = (1 + d) log(1 + d) - d, since
        # Σ p = Σ q: terms >= 0 with no cancellation, and a short series for small |d|.
        far = 0
        for k in range(length):
            p = np.float64(ex[k]) * inv_x + eps
            q = np.float64(eb[k]) * inv_b + eps
            d = (p - q) / q
            gaps[k] = d
            terms[k] = q * _phi_small(d)
            far += abs(d) > _PHI_SERIES_LIMIT
        for k in range(length if far else 0):  # the few far from 1 (NaN stays NaN)
            if abs(gaps[k]) > _PHI_SERIES_LIMIT:
                p = np.float64(ex[k]) * inv_x + eps
                q = np.float64(eb[k]) * inv_b + eps
                terms[k] = p * _log64(p / q) - (p - q)
        kl[r] = _sum64(terms)
        scale = np.float32(kl[r])
        if every:
            for k in range(length):
                sample[s + k] = abs(load(x, s + k) - load(base, s + k)) * scale
        else:
            for k in range(starts[r], starts[r + 1]):
                i = s + scaled_draw(c0, c1, k, length)
                sample[k] = abs(load(x, i) - load(base, i)) * scale
    return kl


@njit(nogil=True, cache=True, error_model="numpy")
def keep_important(x, base, r0, r1, length, kl, threshold, out, out_bf16):
    """Rows ``r0 <= r < r1`` of the ``(rows, length)`` view."""
    for r in range(r0, r1):
        scale = kl[r]
        s = r * length
        for k in range(length):
            b = load(base, s + k)
            d = load(x, s + k) - b
            keep = np.float32(1.0) if abs(d) * scale >= threshold else np.float32(0.0)
            store(out, out_bf16, s + k, np.float32(b + d * keep))
    return out


@njit(nogil=True, cache=True, error_model="numpy")
def count_sample_rows(k0, k1, s, e, rows, counts):
    """``counts[r]`` += how many draws ``s <= k < e`` of the hash stream ``(k0, k1)`` pick row
    ``r`` of ``rows`` (:func:`_scaled_draw`). Ranges run in parallel, each with
    its own ``counts``; the caller sums them."""
    for k in range(s, e):
        counts[scaled_draw(k0, k1, k, rows)] += 1
    return counts


@njit(inline="always")
def _order_key(v):
    # float32 bits -> an unsigned key that orders like the value (negatives reversed).
    u = np.float32(v).view(np.uint32)
    return u ^ np.uint32(0xFFFFFFFF) if u >> np.uint32(31) else u | np.uint32(0x80000000)


@njit(cache=True, error_model="numpy")
def order_statistics(values, ranks, out):
    """``out[j]`` = the ``ranks[j]``-th smallest of ``values`` (0-based; float32 without NaN),
    as a sort would give it: a 16-bit digit histogram locates each rank's bucket, and only
    the values in those buckets are sorted. Two passes, instead of a full selection."""
    n = values.shape[0]
    hist = np.zeros(1 << 16, dtype=np.int64)
    for i in range(n):
        hist[_order_key(values[i]) >> np.uint32(16)] += 1
    starts = np.zeros(1 << 16, dtype=np.int64)  # rank of each bucket's first value
    total = 0
    for d in range(1 << 16):
        starts[d] = total
        total += hist[d]
    digits = np.empty(ranks.shape[0], dtype=np.int64)
    for j in range(ranks.shape[0]):
        d = 0
        while starts[d] + hist[d] <= ranks[j]:
            d += 1
        digits[j] = d
    # One more pass collects the values of every wanted bucket; each bucket is then sorted.
    wanted = np.zeros(1 << 16, dtype=np.bool_)
    fill = np.zeros(1 << 16, dtype=np.int64)  # where each wanted bucket's values go
    size = 0
    for j in range(ranks.shape[0]):
        d = digits[j]
        if not wanted[d]:
            wanted[d] = True
            fill[d] = size
            size += hist[d]
    collected = np.empty(size, dtype=np.float32)
    for i in range(n):
        d = _order_key(values[i]) >> np.uint32(16)
        if wanted[d]:
            collected[fill[d]] = values[i]
            fill[d] += 1
    for j in range(ranks.shape[0]):
        d = digits[j]
        first = fill[d] - hist[d]
        bucket = np.sort(collected[first : fill[d]])
        out[j] = bucket[ranks[j] - starts[d]]
    return out
