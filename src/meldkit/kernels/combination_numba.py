"""Fused CPU kernels (numba) for the Gram-matrix methods (:mod:`meldkit.methods.combination`).

Both kernels read the inputs as stored (bfloat16 bits or float32) and work on the
``(rows, length)`` view of the tensors, cut into fixed work items: item ``w`` is chunk
``w % per_row`` of row ``w // per_row``, where a row is cut into ``per_row = ceil(length /
block)`` chunks of ``block`` elements (the last one ragged). Items never depend on the thread
count.

* :func:`gram`: per item, the ``K x K`` products ``<v_k, v_l>`` of the vectors
  ``v_k = Σ_n A[k, n] x_n``, written to ``partial[w]`` (the caller sums an item's row in
  order). ``v`` is computed in float32 as the eager path does (for the ±1/0 rows of
  :func:`meldkit.methods.combination.differences`, exactly ``x_i - x_j``); every product
  ``v_k[i] v_l[i]`` is exact in float64 and accumulated in float64, in ``GRAM_SUB``
  interleaved sums (element ``i`` of an item goes to sum ``i % GRAM_SUB``) that are added in
  lane order at the end of the item: a fixed order, and far more accurate than float32
  products.
* :func:`combine`: ``out[i] = Σ_n c[row, n] x_n[i]`` in float32, in input order (``c`` float32),
  written as float32 or bfloat16 bits (rounded to nearest even).

No fast-math: no reassociation and no fused multiply-add, so results are reproducible.

Import through :func:`meldkit.kernels.runner.load` (``load("combination_numba")``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from meldkit.kernels.primitives import load, to_bf16_bits

# Elements of every input loaded (as float32) and mixed at a time, so that the buffers stay
# in L1; in the Gram kernel also the number of interleaved float64 sums per product (one per
# position in the sub-block: plain elementwise loops, which the compiler vectorizes).
GRAM_SUB = 128
COMBINE_SUB = 256


@njit(inline="always")
def _item(w, per_row, length, block):
    """``[s, e)``: the flat elements of work item ``w``."""
    r = w // per_row
    c = w - r * per_row
    s = r * length + c * block
    return s, r * length + min(length, (c + 1) * block)


@njit(inline="always")
def _mix_into(xs, mix, s, size, xbuf, v):
    """``v[k, :size] = Σ_n mix[k, n] x_n[s : s + size]`` in float32 (zero terms skipped, so a
    difference row gives ``x_i - x_j`` exactly)."""
    n_inputs = mix.shape[1]
    for n in range(n_inputs):
        x = xs[n]
        xb = xbuf[n]
        for t in range(size):
            xb[t] = load(x, s + t)
    for k in range(mix.shape[0]):
        vk = v[k]
        first = True
        for n in range(n_inputs):
            a = mix[k, n]
            if a == 0:
                continue
            xb = xbuf[n]
            if first:
                for t in range(size):
                    vk[t] = xb[t] * a
                first = False
            else:
                for t in range(size):
                    vk[t] = vk[t] + xb[t] * a
        if first:
            for t in range(size):
                vk[t] = np.float32(0.0)


@njit(nogil=True, cache=True, error_model="numpy")
def gram(xs, w0, w1, mix, per_row, length, block, partial):
    """``partial[w, k, l] = Σ_{i in item w} v_k[i] v_l[i]`` (float64) for items
    ``w0 <= w < w1``; ``mix`` is the ``K x N`` float32 matrix ``A``."""
    n_vec = mix.shape[0]
    n_pairs = n_vec * (n_vec + 1) // 2
    xbuf = np.empty((mix.shape[1], GRAM_SUB), dtype=np.float32)
    v = np.empty((n_vec, GRAM_SUB), dtype=np.float32)
    acc = np.empty((n_pairs, GRAM_SUB), dtype=np.float64)
    for w in range(w0, w1):
        s, e = _item(w, per_row, length, block)
        acc[:] = 0.0
        for b0 in range(s, e, GRAM_SUB):
            size = min(GRAM_SUB, e - b0)
            _mix_into(xs, mix, b0, size, xbuf, v)
            p = 0
            for k in range(n_vec):
                vk = v[k]
                for ll in range(k + 1):
                    vl = v[ll]
                    ap = acc[p]
                    for t in range(size):
                        ap[t] += np.float64(vk[t]) * np.float64(vl[t])
                    p += 1
        p = 0
        for k in range(n_vec):
            for ll in range(k + 1):
                total = 0.0
                for t in range(GRAM_SUB):
                    total += acc[p, t]
                partial[w, k, ll] = total
                partial[w, ll, k] = total
                p += 1
    return partial


@njit(nogil=True, cache=True, error_model="numpy")
def combine(xs, w0, w1, coeffs, per_row, length, block, out, out_bf16):
    """``out[i] = Σ_n coeffs[row, n] x_n[i]`` (float32, in input order) for the elements of
    items ``w0 <= w < w1``; ``out`` is float32, or bfloat16 bits when ``out_bf16``."""
    n_inputs = coeffs.shape[1]
    acc = np.empty(COMBINE_SUB, dtype=np.float32)
    for w in range(w0, w1):
        s, e = _item(w, per_row, length, block)
        c = coeffs[w // per_row]
        for b0 in range(s, e, COMBINE_SUB):
            size = min(COMBINE_SUB, e - b0)
            x = xs[0]
            a = c[0]
            for t in range(size):
                acc[t] = load(x, b0 + t) * a
            for n in range(1, n_inputs):
                x = xs[n]
                a = c[n]
                for t in range(size):
                    acc[t] = acc[t] + load(x, b0 + t) * a
            if out_bf16:
                for t in range(size):
                    out[b0 + t] = to_bf16_bits(acc[t])
            else:
                for t in range(size):
                    out[b0 + t] = acc[t]
    return out
