"""Fused CPU kernels (numba) for the task-vector family: one pass per statistic, no temporaries.

Eager torch makes one trip through memory per operation: TIES on three models is about fifteen
full-size passes and as many full-size temporaries. These kernels compute ``δ = x - b`` on the
fly from the stored inputs (bfloat16 as raw ``uint16`` bits, or float32) and do everything
else per element, in registers:

* :func:`hist_high` / :func:`hist_low`: the two 16-bit digit histograms of ``|δ|``'s float32
  bits that locate an exact rank (the radix select of :mod:`meldkit.methods.sparsify`);
* :func:`tie_counts`: per fixed-size chunk, how many ``|δ|`` equal a cut-off, so that ties are
  resolved in flat index order even when chunks run in parallel;
* :func:`della_bits`: DELLA's random keep masks, packed 8 per byte, and each row's L1 norms
  (DARE's draws are made inline); both use the counter-based stream of
  :func:`meldkit.methods.sparsify.uniform`;
* :func:`l1_sums`: per-chunk float64 sums of ``|δ|`` and of the kept ``|δ|`` (rescaling,
  except DELLA's);
* :func:`mix`: sparsify, rescale, weight, elect signs and mix, writing the output directly.

The arithmetic is the eager path's, operation for operation, in float32 without fast-math
(no reassociation, no fused multiply-add), so both paths give the same bits; the test suite
compares them. Kernels release the GIL and take a range of work items; the caller runs ranges
on several threads. Chunks have a fixed size, independent of the thread count, so sums and
tie resolution do not depend on how many threads run.

Import this module only through :func:`meldkit.kernels.runner.load`
(``load("task_vectors_numba")``), which returns None when numba is not installed.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from meldkit.kernels.primitives import CHUNK, abs_bits, load, to_bf16_bits, uniform

# Sparsification modes (per model).
KEEP_ALL = 0  # δ
ZERO = 1  # a literal +0 (a density <= 0 gives zeros_like, not δ * 0)
WINDOW = 2  # keep |δ| ranks in a window given by up to two cut-offs (TIES, Breadcrumbs)
BITS = 3  # keep where the packed mask has a 1 (DELLA)
BERNOULLI = 4  # keep where the element's uniform draw is below the density (DARE)


_BLOCK = 2048  # elements whose |δ| bits are computed (vectorized) before they are counted


@njit(nogil=True, cache=True, error_model="numpy")
def hist_high(xs, base, s, e, hist):
    """``hist[j, h] += #{s <= i < e : high 16 bits of |x_j[i] - b[i]| == h}``.

    Two interleaved sub-histograms: runs of equal digits (common) would otherwise make each
    increment wait for the previous one."""
    buf = np.empty(_BLOCK, dtype=np.uint32)
    pair = np.zeros((2, hist.shape[1]), dtype=np.int64)
    for j in range(len(xs)):
        x = xs[j]
        pair[:] = 0
        for b0 in range(s, e, _BLOCK):
            size = min(_BLOCK, e - b0)
            for k in range(size):
                buf[k] = abs_bits(load(x, b0 + k) - load(base, b0 + k)) >> np.uint32(16)
            for k in range(0, size - 1, 2):
                pair[0, buf[k]] += 1
                pair[1, buf[k + 1]] += 1
            if size % 2:
                pair[0, buf[size - 1]] += 1
        for h in range(hist.shape[1]):
            hist[j, h] += pair[0, h] + pair[1, h]
    return hist


@njit(nogil=True, cache=True, error_model="numpy")
def hist_low(xs, base, s, e, digits, hist):
    """``hist[j, c, l] += #{s <= i < e : |δ_j[i]| has high digit digits[j, c], low digit l}``.

    ``digits[j, c] < 0`` skips that (model, cut-off)."""
    buf = np.empty(_BLOCK, dtype=np.uint32)
    for j in range(len(xs)):
        x = xs[j]
        d0, d1 = digits[j, 0], digits[j, 1]
        if d0 < 0 and d1 < 0:
            continue
        for b0 in range(s, e, _BLOCK):
            size = min(_BLOCK, e - b0)
            for k in range(size):
                buf[k] = abs_bits(load(x, b0 + k) - load(base, b0 + k))
            for k in range(size):  # few elements match: a well-predicted branch
                a = buf[k]
                hi = np.int64(a >> np.uint32(16))
                if hi == d0:
                    hist[j, 0, a & np.uint32(0xFFFF)] += 1
                if hi == d1:
                    hist[j, 1, a & np.uint32(0xFFFF)] += 1
    return hist


@njit(nogil=True, cache=True, error_model="numpy")
def tie_counts(xs, base, c0, c1, cuts, active, counts):
    """``counts[c, j, k]`` = how many ``|δ_j|`` in chunk ``c`` (``c0 <= c < c1``) equal
    ``cuts[j, k]`` (if active)."""
    n_models = counts.shape[1]
    n = base.shape[0]
    for c in range(c0, c1):
        s, e = c * CHUNK, min(n, (c + 1) * CHUNK)
        for j in range(n_models):
            x = xs[j]
            for k in range(2):
                if not active[j, k]:
                    continue
                cut = cuts[j, k]
                m = 0
                for i in range(s, e):
                    if abs_bits(load(x, i) - load(base, i)) == cut:
                        m += 1
                counts[c, j, k] = m
    return counts


# DELLA's row ranking. Only the draws that fall between a row's lowest and highest keep
# probability depend on ranks at all, and only those whose bucket of |δ| straddles their
# threshold rank need an exact rank, usually a handful per row (see della_bits).
_BUCKETS = 256  # coarse buckets of |δ| per row
_WINDOW = np.uint32(12 << 23)  # |δ| more than 12 octaves below the row's largest share bucket 0
_SCAN_LIMIT = 128  # exact ranks found by scanning the row, one draw at a time; more than this:
_SCAN_GROUPS = 64  # a scan per group of equal |δ| (long rows, heavy ties); more groups: sort


@njit(nogil=True, cache=True, error_model="numpy")
def della_bits(x, base, g0, g1, k0, k1, n_cols, density_minus_eps, step, bits, sums):
    """DELLA's keep mask over rows of ``n_cols`` elements: in each row rank ``|δ|`` ascending
    (stable: ties keep index order, as torch's stable argsort) and keep where
    ``uniform(key)[i] < rank * step + (density - epsilon)`` in float32, as the eager path does.
    ``sums[row]`` receives the row's ``Σ|δ|`` and ``Σ|kept δ|`` in float64 (for rescaling, so
    no other pass needs δ before the mix).

    ``bits`` must start zeroed. Rows are handled in groups of 8 (``g0 <= group < g1``), which
    span whole bytes of the mask whatever the row length, so parallel groups never share one.

    No row is sorted in the common case. The keep probability ``p(rank)`` never decreases
    with the rank, so an element whose rank is known to lie in ``[lo, hi]`` is kept if its
    draw is below ``p(lo)`` and dropped if not below ``p(hi)``. A histogram of ``|δ|`` in
    :data:`_BUCKETS` buckets gives every element such a range (the elements in lower
    buckets, plus its own bucket's count); the few draws that fall inside their range are
    ranked exactly by counting the row's smaller (key, index) pairs. A row with more than
    :data:`_SCAN_LIMIT` such draws (heavy ties in long rows) ranks them a tied group at a time
    (:func:`_rank_by_groups`), or sorts the row if the groups are many."""
    n_rows = base.shape[0] // n_cols
    keys = np.empty(n_cols, dtype=np.uint32)
    slot = np.empty(n_cols, dtype=np.uint32)
    draws = np.empty(n_cols, dtype=np.float32)
    kept = np.empty(n_cols, dtype=np.float32)
    keep = np.empty(n_cols, dtype=np.uint8)
    unsure = np.empty(n_cols, dtype=np.int32)
    packed = np.empty(n_cols, dtype=np.int64)
    picked = np.empty(n_cols, dtype=np.int64)
    count = np.empty((4, _BUCKETS), dtype=np.int32)
    bounds = np.empty(2 * _BUCKETS, dtype=np.float32)
    order = np.empty(n_cols, dtype=np.int32)
    spare = np.empty(n_cols, dtype=np.int32)
    radix = np.empty((2, 1 << _RADIX_BITS), dtype=np.int32)
    for g in range(g0, g1):
        for row in range(g * 8, min(n_rows, g * 8 + 8)):
            off = row * n_cols
            for c in range(n_cols):
                keys[c] = abs_bits(load(x, off + c) - load(base, off + c))
            for c in range(n_cols):
                draws[c] = uniform(k0, k1, off + c)
            magnitudes = keys.view(np.float32)
            sums[row, 0] = _abs_sum(magnitudes, n_cols)
            _bucket_bounds(keys, slot, count, density_minus_eps, step, bounds)
            n_unsure = 0
            for c in range(n_cols):  # 2 = keep, 0 = drop, 1 = depends on the exact rank
                s = slot[c] * np.uint32(2)
                u = draws[c]
                keep[c] = np.uint8(np.uint8(u < bounds[s + np.uint32(1)]) + np.uint8(u < bounds[s]))
            # Unsure draws are rare (a handful per row): skip 8 decisions at a time when none
            # of them is one (bit 0 of a decision byte is set for 1 only).
            words = keep[: n_cols - n_cols % 8].view(np.uint64)
            for q in range(words.shape[0]):
                if words[q] & np.uint64(0x0101010101010101):
                    for c in range(q * 8, q * 8 + 8):
                        if keep[c] == 1:
                            unsure[n_unsure] = c
                            n_unsure += 1
            for c in range(n_cols - n_cols % 8, n_cols):
                if keep[c] == 1:
                    unsure[n_unsure] = c
                    n_unsure += 1
            if n_unsure > _SCAN_LIMIT and not _rank_by_groups(
                keys, draws, unsure[:n_unsure], packed, picked, density_minus_eps, step, keep
            ):
                ranked = _stable_argsort(keys, order, spare, radix)
                for rank in range(n_cols):
                    c = ranked[rank]
                    p = np.float32(np.float32(rank) * step) + density_minus_eps
                    keep[c] = 2 if draws[c] < p else 0
            elif 0 < n_unsure <= _SCAN_LIMIT:
                for c in range(n_cols):  # (|δ|, index): the stable order as one integer
                    packed[c] = (np.int64(keys[c]) << np.int64(32)) | c
                for k in range(n_unsure):
                    c = unsure[k]
                    mine = packed[c]
                    rank = 0
                    for j in range(n_cols):
                        rank += packed[j] < mine
                    p = np.float32(np.float32(rank) * step) + density_minus_eps
                    keep[c] = 2 if draws[c] < p else 0
            for c in range(n_cols):  # float32 products, then the vectorized float64 sum
                kept[c] = magnitudes[c] * np.float32(keep[c] >> 1)
            sums[row, 1] = _abs_sum(kept, n_cols)
            _pack_bits(keep, off, bits)
    return bits


@njit(
    cache=True, nogil=True, error_model="numpy"
)  # not inlined: rarely called, kept out of the hot loop
def _rank_by_groups(keys, draws, unsure, packed, picked, density_minus_eps, step, keep):
    """Decide the draws ``unsure`` (indices, ascending) from their exact stable ranks, a group
    of equal ``|δ|`` at a time; False (nothing decided) past :data:`_SCAN_GROUPS` groups.

    Long rows of bfloat16 deltas have big groups of tied ``|δ|`` (one ulp of the weights is a
    common delta), and their members make most of the unsure draws: 140 per row of 14336 in a
    synthetic Llama-like layer, in some 30 groups. One scan ranks a group's first member
    (counting smaller ``(|δ|, index)`` pairs, packed into one int64 each as AVX2 compares
    fast); each next member adds the equal keys between it and the previous one."""
    n = keys.shape[0]
    m = unsure.shape[0]
    for i in range(n):
        packed[i] = (np.int64(keys[i]) << np.int64(32)) | i
    for k in range(m):
        picked[k] = packed[unsure[k]]
    by_key = np.sort(picked[:m])  # groups of one key, each in index order
    groups = 0
    start = 0
    while start < m:
        key = by_key[start] >> np.int64(32)
        end = start + 1
        while end < m and (by_key[end] >> np.int64(32)) == key:
            end += 1
        groups += 1
        if groups > _SCAN_GROUPS:
            return False  # sorting the row redoes every decision
        first = by_key[start]
        rank = 0
        for j in range(n):
            rank += packed[j] < first
        low, high = key << np.int64(32), (key + np.int64(1)) << np.int64(32)
        previous = np.int64(first & np.int64(0xFFFFFFFF))
        for g in range(start, end):
            member = np.int64(by_key[g] & np.int64(0xFFFFFFFF))
            for j in range(previous, member):  # the equal keys since the previous member
                rank += (packed[j] >= low) & (packed[j] < high)
            previous = member
            p = np.float32(np.float32(rank) * step) + density_minus_eps
            keep[member] = 2 if draws[member] < p else 0
        start = end
    return True


@njit(inline="always")
def _bucket_bounds(keys, slot, count, density_minus_eps, step, bounds):
    """Bucket each key of a row (``slot``) and give each bucket ``s`` the keep probabilities
    of its lowest and highest rank (``bounds[2s]``, ``bounds[2s + 1]``: one cache line).

    Buckets split the span from the row's largest key down to :data:`_WINDOW` below it
    evenly in float32 bit patterns (about 1/20 octave each); smaller keys share bucket 0.
    Bit patterns of magnitudes order like the values, so bucket order is rank order."""
    n = keys.shape[0]
    top = keys.max()
    low = top - _WINDOW if top > _WINDOW else np.uint32(0)
    shift = np.uint32(0)
    while ((top - low) >> shift) >= np.uint32(_BUCKETS):
        shift += np.uint32(1)
    for c in range(n):
        slot[c] = (max(keys[c], low) - low) >> shift
    # Four interleaved counts: runs of equal buckets would otherwise make each increment
    # wait for the previous one (four measured 5% faster than two on `med`'s rows).
    count[:] = 0
    m = n - n % 4
    for c in range(0, m, 4):
        count[0, slot[c]] += 1
        count[1, slot[c + 1]] += 1
        count[2, slot[c + 2]] += 1
        count[3, slot[c + 3]] += 1
    for c in range(m, n):
        count[0, slot[c]] += 1
    below = 0
    for s in range(_BUCKETS):
        size = (count[0, s] + count[1, s]) + (count[2, s] + count[3, s])
        bounds[2 * s] = np.float32(np.float32(below) * step) + density_minus_eps
        bounds[2 * s + 1] = np.float32(np.float32(below + size - 1) * step) + density_minus_eps
        below += size


@njit(inline="always")
def _pack_bits(keep, off, bits):
    """OR one row's decisions (0 = drop, 2 = keep) into the packed mask at element offset
    ``off``: whole bytes at once where the row starts on a byte."""
    n = keep.shape[0]
    done = 0
    if off % 8 == 0:
        done = n - n % 8
        for q in range(done // 8):
            v = np.uint8(0)
            for t in range(8):
                v |= np.uint8((keep[q * 8 + t] >> 1) << t)
            bits[(off >> 3) + q] = v
    for c in range(done, n):
        i = off + c
        bits[i >> 3] |= np.uint8((keep[c] >> 1) << (i & 7))


_RADIX_BITS = 8  # digit width of the row sorts: 256 counters


@njit(cache=True)
def _stable_argsort(keys, order, spare, count):
    """The indices that sort ``keys`` ascending, equal keys in index order (returned; it is
    ``order`` or ``spare``). Magnitudes' float32 bits order like the floats, NaN last as in
    torch's sort.

    Two stable 8-bit LSD radix passes order the rows by the top 16 bits of ``keys - min``
    (over the row's span of keys); a stable insertion sort then orders the few neighbours
    that share those bits. |δ| spans some 2^30 bit patterns, so 16 bits leave about one
    element per value and the insertion sort touches each element about once: a third
    fewer passes than a full 10-bit LSD sort, and 256 counters instead of 1024 per pass."""
    n = keys.shape[0]
    lowest = keys.min()
    span = np.uint32(keys.max() - lowest)
    shift = 0
    while (span >> np.uint32(shift)) >= np.uint32(1 << (2 * _RADIX_BITS)):
        shift += 1
    mask = np.uint32((1 << _RADIX_BITS) - 1)
    sh0, sh1 = np.uint32(shift), np.uint32(shift + _RADIX_BITS)
    # Both digits' counts in one read of the keys, then their starting offsets.
    count[:] = 0
    for i in range(n):
        rel = keys[i] - lowest
        count[0, (rel >> sh0) & mask] += 1
        count[1, (rel >> sh1) & mask] += 1
    for p in range(2):
        total = 0
        for d in range(count.shape[1]):
            c = count[p, d]
            count[p, d] = total
            total += c
    for i in range(n):  # pass 1: by the low digit, in index order
        d = ((keys[i] - lowest) >> sh0) & mask
        spare[count[0, d]] = i
        count[0, d] += 1
    for i in range(n):  # pass 2: by the high digit, stable
        k = spare[i]
        d = ((keys[k] - lowest) >> sh1) & mask
        order[count[1, d]] = k
        count[1, d] += 1
    if shift:
        for i in range(1, n):
            k = order[i]
            key = keys[k]
            j = i - 1
            while j >= 0 and keys[order[j]] > key:
                order[j + 1] = order[j]
                j -= 1
            order[j + 1] = k
    return order


@njit(inline="always")
def _mask_by_bits(values, bits, s, n, dest):
    """``dest[k] = values[k] * keep`` for ``k < n``, ``keep`` being bit ``s + k`` of the packed
    mask; a byte of the mask at a time (``s`` is a multiple of 8: chunks start on bytes)."""
    whole = n // 8
    for q in range(whole):
        byte = bits[(s >> 3) + q]
        for t in range(8):
            dest[q * 8 + t] = values[q * 8 + t] * np.float32((byte >> t) & 1)
    for k in range(whole * 8, n):
        i = s + k
        dest[k] = values[k] * np.float32((bits[i >> 3] >> (i & 7)) & 1)


@njit(cache=True, error_model="numpy")
def _sparsify_chunk(x, base, s, e, mode, cuts, thr, rule, partial, ties, bits, rand, dest):
    """``dest[i - s] = sparsify(δ)[i]`` for ``s <= i < e``: δ, δ * 1.0 / δ * 0.0, or +0.

    WINDOW keeps ``|δ|`` bits ``a`` with ``thr[0] <= a <= thr[1]`` when no cut-off has a
    partial tie (unused cut-offs are neutral: 0 and all ones); otherwise ties are resolved in
    flat order: ``ties`` holds, per cut-off, the ordinal of the chunk's first tie and the
    chunk's number of ties. Most chunks' ties are all kept or all dropped, which only moves
    the bound; the one chunk per cut-off where the budget runs out counts ties one by one
    (elements equal to each cut seen so far): at the low cut the first ``rule[0]`` ties are
    dropped, at the high cut only the first ``rule[1]`` are kept (the eager path's rule)."""
    if mode == ZERO:
        for i in range(s, e):
            dest[i - s] = np.float32(0.0)
    elif mode == KEEP_ALL:
        for i in range(s, e):
            dest[i - s] = load(x, i) - load(base, i)
    elif mode == BITS:
        for i in range(s, e):
            dest[i - s] = load(x, i) - load(base, i)
        _mask_by_bits(dest, bits, s, e - s, dest)
    elif mode == BERNOULLI:
        k0, k1, density = np.uint64(rand[0]), np.uint64(rand[1]), np.float32(rand[2])
        for i in range(s, e):
            d = load(x, i) - load(base, i)
            dest[i - s] = d * np.float32(uniform(k0, k1, i) < density)
    else:
        lo, hi = thr[0], thr[1]
        t_lo, t_hi = ties[0, 0], ties[1, 0]
        cut_lo, cut_hi = np.int64(cuts[0]), np.int64(cuts[1])
        drop_lo, keep_hi = rule[0], rule[1]
        by_ordinal = False
        if partial[0]:
            if t_lo + ties[0, 1] <= drop_lo:
                lo = cut_lo + 1  # every tie here is among the first drop_lo: dropped
            elif t_lo >= drop_lo:
                lo = cut_lo
            else:
                by_ordinal = True
        if partial[1]:
            if t_hi + ties[1, 1] <= keep_hi:
                hi = cut_hi  # every tie here is among the first keep_hi: kept
            elif t_hi >= keep_hi:
                hi = cut_hi - 1
            else:
                by_ordinal = True
        if not by_ordinal:
            for i in range(s, e):
                d = load(x, i) - load(base, i)
                a = np.int64(abs_bits(d))
                dest[i - s] = d * np.float32((a >= lo) & (a <= hi))
        else:
            for i in range(s, e):
                d = load(x, i) - load(base, i)
                a = np.int64(abs_bits(d))
                eq_lo = partial[0] and a == cut_lo
                eq_hi = partial[1] and a == cut_hi
                ok_lo = (t_lo >= drop_lo) if eq_lo else a >= lo
                ok_hi = (t_hi < keep_hi) if eq_hi else a <= hi
                t_lo += np.int64(eq_lo)
                t_hi += np.int64(eq_hi)
                dest[i - s] = d * np.float32(ok_lo and ok_hi)


@njit(inline="always")
def _abs_sum(values, n):
    """``Σ |values[k]|`` for ``k < n`` in float64, with four interleaved accumulators: a fixed
    pattern (the sum does not depend on threads) whose additions do not wait on each other."""
    a0 = a1 = a2 = a3 = 0.0
    k = 0
    while k + 4 <= n:
        a0 += abs(np.float64(values[k]))
        a1 += abs(np.float64(values[k + 1]))
        a2 += abs(np.float64(values[k + 2]))
        a3 += abs(np.float64(values[k + 3]))
        k += 4
    while k < n:
        a0 += abs(np.float64(values[k]))
        k += 1
    return (a0 + a1) + (a2 + a3)


@njit(nogil=True, cache=True, error_model="numpy")
def l1_sums(xs, base, c0, c1, modes, cuts, thr, rule, partial, ties, bits, rand, sums):
    """``sums[c, j, 0] = Σ|δ_j|`` and ``sums[c, j, 1] = Σ|kept δ_j|`` over chunk ``c``
    (``c0 <= c < c1``), in float64 (rescaling compares the two)."""
    n_models = sums.shape[1]
    n = base.shape[0]
    for c in range(c0, c1):
        s, e = c * CHUNK, min(n, (c + 1) * CHUNK)
        delta = np.empty(e - s, dtype=np.float32)
        kept = np.empty(e - s, dtype=np.float32)
        for j in range(n_models):
            x = xs[j]
            _sparsify_chunk(
                x,
                base,
                s,
                e,
                KEEP_ALL,
                cuts[j],
                thr[j],
                rule[j],
                partial[j],
                ties[c, j],
                bits[j],
                rand[j],
                delta,
            )
            if modes[j] == BITS:  # δ is at hand: mask it rather than compute it again
                _mask_by_bits(delta, bits[j], s, e - s, kept)
            else:
                _sparsify_chunk(
                    x,
                    base,
                    s,
                    e,
                    modes[j],
                    cuts[j],
                    thr[j],
                    rule[j],
                    partial[j],
                    ties[c, j],
                    bits[j],
                    rand[j],
                    kept,
                )
            sums[c, j, 0] = _abs_sum(delta, e - s)
            sums[c, j, 1] = _abs_sum(kept, e - s)
    return sums


@njit(nogil=True, cache=True, error_model="numpy")
def mix(
    xs,
    base,
    c0,
    c1,
    out,
    out_bf16,
    modes,
    cuts,
    thr,
    rule,
    partial,
    ties,
    bits,
    rand,
    scale,
    has_scale,
    weights,
    consensus,
    normalize,
    divisor,
    lam,
    apply_lam,
):
    """The merged values ``b + lambda * mix(w_j * sparsify(δ_j))`` (see task_vectors).

    Chunks ``c0 <= c < c1``. ``out`` is float32, or bfloat16 bits when ``out_bf16`` (rounded to
    nearest even). Each chunk is computed in cache-resident buffers, one loop per step and
    model, written so the compiler can vectorize them (selects, no branches)."""
    n_models = modes.shape[0]
    n = base.shape[0]
    for c in range(c0, c1):
        s, e = c * CHUNK, min(n, (c + 1) * CHUNK)
        size = e - s
        v = np.empty((n_models, size), dtype=np.float32)
        for j in range(n_models):
            vj = v[j]
            _sparsify_chunk(
                xs[j],
                base,
                s,
                e,
                modes[j],
                cuts[j],
                thr[j],
                rule[j],
                partial[j],
                ties[c, j],
                bits[j],
                rand[j],
                vj,
            )
            w = weights[j]
            if has_scale[j]:
                f = scale[j]
                for k in range(size):
                    vj[k] = (vj[k] * f) * w
            else:
                for k in range(size):
                    vj[k] = vj[k] * w
        mixed = np.empty(size, dtype=np.float32)
        if consensus:
            total = v[0].copy()
            for j in range(1, n_models):
                vj = v[j]
                for k in range(size):
                    total[k] = total[k] + vj[k]
            sign = total  # reused: +1 where the sum is >= 0 (an exact 0 elects +), else -1
            for k in range(size):
                sign[k] = np.float32(1.0) if total[k] >= 0 else np.float32(-1.0)
            div = np.zeros(size, dtype=np.float32)
            mixed[:] = 0
            for j in range(n_models):
                vj = v[j]
                w = weights[j]
                for k in range(size):
                    agree = vj[k] * sign[k]
                    agree = np.float32(0.0) if agree < 0 else agree  # clamp(min=0); NaN stays
                    div[k] = div[k] + (w if agree > 0 else np.float32(0.0))
                    mixed[k] = mixed[k] + agree * sign[k]
            for k in range(size):
                d = np.float32(1.0) if div[k] == 0 else div[k]
                mixed[k] = mixed[k] / d if normalize else mixed[k]
        else:
            mixed[:] = v[0]
            for j in range(1, n_models):
                vj = v[j]
                for k in range(size):
                    mixed[k] = mixed[k] + vj[k]
            if normalize:
                for k in range(size):
                    mixed[k] = mixed[k] / divisor
        if apply_lam:
            for k in range(size):
                mixed[k] = mixed[k] * lam
        if out_bf16:
            for k in range(size):
                out[s + k] = to_bf16_bits(np.float32(load(base, s + k) + mixed[k]))
        else:
            for k in range(size):
                out[s + k] = np.float32(load(base, s + k) + mixed[k])
    return out
