"""Fused CPU kernels (numba) for sce: a few passes over the stored inputs, no temporaries.

Every kernel computes, per element, the deltas ``δ_j = x_j - b`` from the stored inputs
(bfloat16 bits or float32, read by :func:`meldkit.kernels.primitives.load`) and the selection
key, the population variance of the deltas by Welford's update exactly as
:func:`meldkit.methods.sce.variance` does it (float32, same operations in the same order,
``|var|`` as float32 bits), in cache-resident buffers of a chunk:

* :func:`hist_high` / :func:`hist_low`: the two 16-bit digit histograms of the key that locate
  the top-k cut-off exactly (radix select), and the number of zero keys;
* :func:`energy_lanes`: per fixed-size chunk, float64 sums of the squared masked deltas, in
  :data:`LANES` lanes (element ``i`` of a chunk goes to lane ``i % LANES``, accumulated one
  by one in order; the squares are exact), both with the ties at the cut-off dropped and kept, and the number of ties, so that
  the ties are resolved in flat order afterwards without another pass;
  :func:`energy_lanes_resolved` redoes the one chunk where the tie budget runs out;
* :func:`mix`: mask, sign election, weights and mix, writing the output in float32 or
  bfloat16 (rounded to nearest even) directly.

Arithmetic is the eager path's, operation for operation, without fast-math. torch computes
``add(alpha=)`` and ``addcmul`` with a fused multiply-add on the CPUs where it vectorizes with
FMA; the kernels take a ``fused`` flag (probed from torch by the driver) and use
``llvm.fma`` then, a separate multiply and add otherwise.

Import this module only through :func:`meldkit.kernels.runner.load`
(``load("sce_numba")``), which returns None when numba is not installed.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from meldkit.kernels.primitives import CHUNK, load, to_bf16_bits

__all__ = [
    "CHUNK",
    "LANES",
    "KEEP_ALL",
    "ZERO",
    "SELECT",
    "fma32",
    "square_lanes",
    "variance_keys",
    "hist_high",
    "hist_low",
    "energy_lanes",
    "energy_lanes_resolved",
    "mix",
]

# Masking modes.
KEEP_ALL = 0  # every δ (select_topk >= 1, or k = n)
ZERO = 1  # literal +0 deltas (select_topk <= 0, or k = 0)
SELECT = 2  # keep keys above the cut-off, and ties at it from the drop-th on (flat order)

_BLOCK = 2048  # elements whose keys are computed (vectorized) before they are counted


@intrinsic
def _fma(typingctx, a, b, c):  # type: ignore[no-untyped-def]
    """``a * b + c`` in float32, rounded once (``llvm.fma``)."""
    if not all(t == types.float32 for t in (a, b, c)):
        return None
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        f32 = ir.FloatType()
        fn = builder.module.declare_intrinsic(
            "llvm.fma", [f32], ir.FunctionType(f32, [f32, f32, f32])
        )
        return builder.call(fn, args)

    return sig, codegen


@njit(inline="always")
def _madd(a, b, c, fused):
    """``c + a * b`` as torch's ``add(alpha=)`` / ``addcmul`` compute it: fused or not."""
    if fused:
        return _fma(np.float32(a), np.float32(b), np.float32(c))  # type: ignore[call-arg]
    return np.float32(c + np.float32(a * b))


@njit(cache=True)
def fma32(a, b, c, fused, out):
    """``out[i] = c[i] + a[i] * b[i]`` with :func:`_madd` (for tests and the driver's probe)."""
    for i in range(out.shape[0]):
        out[i] = _madd(a[i], b[i], c[i], fused)
    return out


@njit(inline="always")
def _keys(xs, base, s, size, fused, mean, m2, key):
    """``key[k]`` = float32 bits of ``|var|`` at element ``s + k`` for ``k < size``, where var
    is sce._variance's population variance of the deltas (Welford's update)."""
    for k in range(size):
        mean[k] = np.float32(0.0)
        m2[k] = np.float32(0.0)
    for j in range(len(xs)):
        x = xs[j]
        alpha = np.float32(1.0 / (j + 1))
        for k in range(size):
            d = load(x, s + k) - load(base, s + k)
            diff = d - mean[k]
            mu = _madd(diff, alpha, mean[k], fused)  # mean.add_(diff, alpha=1/k)
            mean[k] = mu
            m2[k] = _madd(diff, d - mu, m2[k], fused)  # m2.addcmul_(diff, d - mean)
    count = np.float32(len(xs))
    for k in range(size):
        key[k] = np.float32(m2[k] / count).view(np.uint32) & np.uint32(0x7FFFFFFF)


@njit(nogil=True, cache=True, error_model="numpy")
def variance_keys(xs, base, s, e, fused, out):
    """``out[i - s]`` = the key of element ``i`` for ``s <= i < e`` (for tests)."""
    mean = np.empty(e - s, dtype=np.float32)
    m2 = np.empty(e - s, dtype=np.float32)
    _keys(xs, base, s, e - s, fused, mean, m2, out)
    return out


@njit(nogil=True, cache=True, error_model="numpy")
def hist_high(xs, base, s, e, fused, hist, zeros):
    """``hist[h] += #{s <= i < e : key[i] >> 16 == h}`` and ``zeros[0] += #{key[i] == 0}``.

    Two interleaved sub-histograms: runs of equal digits (common) would otherwise make each
    increment wait for the previous one."""
    buf = np.empty(_BLOCK, dtype=np.uint32)
    mean = np.empty(_BLOCK, dtype=np.float32)
    m2 = np.empty(_BLOCK, dtype=np.float32)
    pair = np.zeros((2, hist.shape[0]), dtype=np.int64)
    zero = np.int64(0)
    for b0 in range(s, e, _BLOCK):
        size = min(_BLOCK, e - b0)
        _keys(xs, base, b0, size, fused, mean, m2, buf)
        for k in range(size):
            zero += np.int64(buf[k] == 0)
        for k in range(size):
            buf[k] = buf[k] >> np.uint32(16)
        for k in range(0, size - 1, 2):
            pair[0, buf[k]] += 1
            pair[1, buf[k + 1]] += 1
        if size % 2:
            pair[0, buf[size - 1]] += 1
    for h in range(hist.shape[0]):
        hist[h] += pair[0, h] + pair[1, h]
    zeros[0] += zero
    return hist


@njit(nogil=True, cache=True, error_model="numpy")
def hist_low(xs, base, s, e, fused, digit, hist):
    """``hist[l] += #{s <= i < e : key[i] has high digit ``digit`` and low digit l}``."""
    buf = np.empty(_BLOCK, dtype=np.uint32)
    mean = np.empty(_BLOCK, dtype=np.float32)
    m2 = np.empty(_BLOCK, dtype=np.float32)
    for b0 in range(s, e, _BLOCK):
        size = min(_BLOCK, e - b0)
        _keys(xs, base, b0, size, fused, mean, m2, buf)
        for k in range(size):  # few elements match: a well-predicted branch
            a = buf[k]
            if np.int64(a >> np.uint32(16)) == digit:
                hist[a & np.uint32(0xFFFF)] += 1
    return hist


LANES = 16  # float64 lane sums per chunk and model: element i of a chunk goes to lane i % 16
_VEC = 4  # doubles per vector: LANES / _VEC independent vector accumulators


@intrinsic
def _square_rows(typingctx, v, rows, lanes):  # type: ignore[no-untyped-def]
    """``lanes[l] += float64(v[LANES * r + l])²`` for ``r < rows`` in order, in vectors of four
    doubles (the squares are exact, so the lanes are the same as one by one)."""
    if not (
        isinstance(v, types.Array)
        and v.dtype == types.float32
        and v.ndim == 1
        and v.layout == "C"
        and isinstance(lanes, types.Array)
        and lanes.dtype == types.float64
        and lanes.ndim == 1
        and lanes.layout == "C"
        and isinstance(rows, types.Integer)
    ):
        return None
    sig = types.void(v, rows, lanes)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        values = context.make_array(signature.args[0])(context, builder, args[0])
        sums = context.make_array(signature.args[2])(context, builder, args[2])
        f32v = ir.VectorType(ir.FloatType(), _VEC)
        f64v = ir.VectorType(ir.DoubleType(), _VEC)
        n_acc = LANES // _VEC
        sums_ptr = builder.bitcast(sums.data, f64v.as_pointer())
        values_ptr = builder.bitcast(values.data, f32v.as_pointer())
        rows = context.cast(builder, args[1], signature.args[1], types.intp)
        accs = []
        for q in range(n_acc):
            acc = cgutils.alloca_once(builder, f64v)
            builder.store(builder.load(builder.gep(sums_ptr, [cgutils.intp_t(q)]), align=8), acc)
            accs.append(acc)
        with cgutils.for_range(builder, rows) as loop:
            first = builder.mul(loop.index, cgutils.intp_t(n_acc))
            for q, acc in enumerate(accs):
                x = builder.load(
                    builder.gep(values_ptr, [builder.add(first, cgutils.intp_t(q))]), align=4
                )
                x = builder.fpext(x, f64v)
                builder.store(builder.fadd(builder.load(acc), builder.fmul(x, x)), acc)
        for q, acc in enumerate(accs):
            builder.store(builder.load(acc), builder.gep(sums_ptr, [cgutils.intp_t(q)]), align=8)
        return context.get_dummy_value()

    return sig, codegen


@njit(inline="always")
def _square_lanes(v, size, lanes):
    """``lanes[l] += Σ float64(v[k])²`` over ``k ≡ l (mod LANES)``, ``k < size``, one by one
    in order (independent chains; the order does not depend on threads)."""
    if lanes.shape[0] != LANES or v.shape[0] < size:
        raise ValueError("bad lane sums or buffer")
    rows = size // LANES
    _square_rows(v, rows, lanes)  # type: ignore[call-arg]
    for k in range(rows * LANES, size):
        q = np.float64(v[k])
        lanes[k - rows * LANES] += q * q


@njit(cache=True)
def square_lanes(v, lanes):
    """:func:`_square_lanes` over all of ``v`` (for tests)."""
    _square_lanes(v, v.shape[0], lanes)
    return lanes


@njit(inline="always")
def _mask(key, size, cut, drop, first, count, keep):
    """``keep[k]`` = 1.0 where element ``k`` of the chunk is kept, else 0.0: keys above
    ``cut``, and keys equal to it whose flat ordinal among the ties (``first`` for the chunk's
    first tie) is at least ``drop``. ``count`` is the number of ties in the chunk."""
    if first + count <= drop:  # every tie here is among the first drop: dropped
        for k in range(size):
            keep[k] = np.float32(key[k] > cut)
    elif first >= drop:  # every tie here is kept
        for k in range(size):
            keep[k] = np.float32(key[k] >= cut)
    else:
        t = first
        for k in range(size):
            a = key[k]
            tie = a == cut
            keep[k] = np.float32((a > cut) or (tie and t >= drop))
            t += np.int64(tie)


@njit(nogil=True, cache=True, error_model="numpy")
def energy_lanes(xs, base, c0, c1, fused, mode, cut, lanes, ties):
    """For chunks ``c0 <= c < c1``: ``lanes[c, v, j]`` = the float64 lane sums of the
    squared masked ``δ_j`` (see :func:`_square_lanes`); with ``mode`` SELECT ``v = 0`` drops
    the ties at ``cut`` and ``v = 1`` keeps them, and ``ties[c]`` counts them; with KEEP_ALL
    only ``v = 1`` is written, from the unmasked deltas. Not called with ZERO."""
    n_models = len(xs)
    n = base.shape[0]
    key = np.empty(CHUNK, dtype=np.uint32)
    mean = np.empty(CHUNK, dtype=np.float32)
    m2 = np.empty(CHUNK, dtype=np.float32)
    gt = np.empty(CHUNK, dtype=np.float32)
    ge = np.empty(CHUNK, dtype=np.float32)
    for c in range(c0, c1):
        s, e = c * CHUNK, min(n, (c + 1) * CHUNK)
        size = e - s
        if mode == SELECT:
            _keys(xs, base, s, size, fused, mean, m2, key)
            m = np.int64(0)
            for k in range(size):
                m += np.int64(key[k] == cut)
            ties[c] = m
        for j in range(n_models):
            x = xs[j]
            if mode == SELECT:
                for k in range(size):
                    d = load(x, s + k) - load(base, s + k)
                    a = key[k]
                    gt[k] = d * np.float32(a > cut)
                    ge[k] = d * np.float32(a >= cut)
                _square_lanes(gt, size, lanes[c, 0, j])
            else:
                for k in range(size):
                    ge[k] = load(x, s + k) - load(base, s + k)
            _square_lanes(ge, size, lanes[c, 1, j])
    return lanes


@njit(nogil=True, cache=True, error_model="numpy")
def energy_lanes_resolved(xs, base, c, fused, cut, drop, first, count, lanes):
    """``lanes[j]`` = chunk ``c``'s lane sums (as :func:`energy_lanes`) with the ties at
    ``cut`` resolved by flat ordinal (``first`` ties before the chunk, ``count`` in it)."""
    n = base.shape[0]
    s, e = c * CHUNK, min(n, (c + 1) * CHUNK)
    size = e - s
    key = np.empty(size, dtype=np.uint32)
    mean = np.empty(size, dtype=np.float32)
    m2 = np.empty(size, dtype=np.float32)
    keep = np.empty(size, dtype=np.float32)
    v = np.empty(size, dtype=np.float32)
    _keys(xs, base, s, size, fused, mean, m2, key)
    _mask(key, size, cut, drop, first, count, keep)
    for j in range(len(xs)):
        x = xs[j]
        for k in range(size):
            v[k] = (load(x, s + k) - load(base, s + k)) * keep[k]
        _square_lanes(v, size, lanes[j])
    return lanes


@njit(nogil=True, cache=True, error_model="numpy")
def mix(xs, base, c0, c1, fused, mode, cut, drop, first, ties, omega, out, out_bf16):
    """The merged values ``b + Σ ω_j m_j δ_j / max(Σ ω_j m_j, 1e-6)`` of chunks
    ``c0 <= c < c1`` (sce._mix on the masked deltas), into ``out``: float32, or bfloat16 bits
    when ``out_bf16``. ``first[c]`` / ``ties[c]``: the ties at the cut-off before chunk ``c``
    and in it (SELECT)."""
    n_models = len(xs)
    n = base.shape[0]
    key = np.empty(CHUNK, dtype=np.uint32)
    mean = np.empty(CHUNK, dtype=np.float32)
    m2 = np.empty(CHUNK, dtype=np.float32)
    keep = np.empty(CHUNK, dtype=np.float32)
    v = np.empty((n_models, CHUNK), dtype=np.float32)
    total = np.empty(CHUNK, dtype=np.float32)
    mixed = np.empty(CHUNK, dtype=np.float32)
    div = np.empty(CHUNK, dtype=np.float32)
    floor = np.float32(1e-6)
    for c in range(c0, c1):
        s, e = c * CHUNK, min(n, (c + 1) * CHUNK)
        size = e - s
        if mode == SELECT:
            _keys(xs, base, s, size, fused, mean, m2, key)
            _mask(key, size, cut, drop, first[c], ties[c], keep)
        for j in range(n_models):
            x = xs[j]
            vj = v[j]
            if mode == ZERO:
                for k in range(size):
                    vj[k] = np.float32(0.0)
            elif mode == SELECT:
                for k in range(size):
                    vj[k] = (load(x, s + k) - load(base, s + k)) * keep[k]  # d.mul_(keep)
            else:
                for k in range(size):
                    vj[k] = load(x, s + k) - load(base, s + k)
        # positive = Σ_j δ_j >= 0, summed in model order (an exact 0 elects +, NaN elects -)
        v0 = v[0]
        for k in range(size):
            total[k] = v0[k]
        for j in range(1, n_models):
            vj = v[j]
            for k in range(size):
                total[k] = total[k] + vj[k]
        for k in range(size):
            mixed[k] = np.float32(0.0)
            div[k] = np.float32(0.0)
        for j in range(n_models):
            vj = v[j]
            w = omega[j]
            for k in range(size):
                d = vj[k]
                agree = (d > 0) if total[k] >= 0 else (d < 0)  # zeros never agree
                weight = np.float32(agree) * w
                mixed[k] = _madd(d, weight, mixed[k], fused)  # mixed.addcmul_(d, weight)
                div[k] = div[k] + weight
        if out_bf16:
            for k in range(size):
                dv = div[k]
                dv = floor if dv < floor else dv  # clamp_min_(1e-6); NaN stays
                out[s + k] = to_bf16_bits(np.float32(load(base, s + k) + mixed[k] / dv))
        else:
            for k in range(size):
                dv = div[k]
                dv = floor if dv < floor else dv
                out[s + k] = np.float32(load(base, s + k) + mixed[k] / dv)
    return out
