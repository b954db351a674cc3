"""Sparsifiers for task vectors (the first step of the task-vector family).

Each takes a delta ``δ = x - base`` and returns a tensor of the same shape where dropped
elements are zero:

* ``magnitude`` (TIES): keep exactly ``k = max(1, floor(density*N))`` elements of largest
  ``|δ|``; ``density >= 1`` returns ``δ`` unchanged, ``density <= 0`` gives zeros.
* ``bernoulli`` (DARE, the "random" method): keep each element with probability ``density``.
* ``magnitude_outliers`` (Model Breadcrumbs): with ``target = floor(density*N)``,
  ``n_top = floor(gamma*N)`` and ``n_bot = max(0, N - target - n_top)``, keep the elements of
  ascending ``|δ|`` rank ``[n_bot, n_bot + target)``: the smallest ``n_bot`` and the largest
  remainder are dropped.
* ``della_magprune`` (DELLA): per row (a 1-D tensor is one row), rank ``|δ|`` ascending from
  0 to ``n-1`` and keep each element with probability
  ``p = density - epsilon + 2*epsilon*rank/(n-1)``.

With ``rescale`` the kept elements are multiplied by ``||δ||_1 / ||kept||_1`` over the whole
tensor (skipped when either norm is below 1e-7), as MergeKit does; this equals DARE's ``1/p``
only in expectation.

Selections find the cut-off value with ``torch.kthvalue`` (O(N); ``topk`` on CUDA) instead of
a full sort; elements tied at a cut-off
are resolved in index order so the kept count is exactly MergeKit's (MergeKit's unstable
argsort resolves such ties arbitrarily, so which of several equal ``|δ|`` survives is
unspecified there too). Random draws come from a counter-based stream (:func:`uniform`): the
draw for an element depends only on the stream's key and the element's index, so a seed gives
the same mask on any device and thread count, and any slice can be drawn on its own.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

__all__ = [
    "kth_smallest",
    "rank_window_mask",
    "top_k_mask",
    "l1_norm",
    "rescale_l1",
    "hash32",
    "uniform",
    "uniform_chunks",
    "magnitude",
    "bernoulli",
    "magnitude_outliers",
    "della_magprune",
]

# Elements drawn per call to torch.rand: bounds the CPU scratch memory of a random mask.
DRAW_CHUNK = 1 << 22
# Below torch's parallel grain size (32768) a reduction runs on one thread, so summing in
# blocks of this many elements gives the same bits whatever the thread count.
_SUM_BLOCK = 16384
# MergeKit's threshold under which L1 rescaling is skipped.
RESCALE_EPS = 1e-7


def kth_smallest(flat: torch.Tensor, k: int, *, nonnegative: bool = False) -> torch.Tensor:
    """The ``k``-th smallest value (1-based) of a 1-D tensor, as a 0-dim tensor.
    ``nonnegative``: the caller knows no element has its sign bit set (it checked once).

    ``kthvalue`` is O(N) on the CPU but runs one thread block per slice on CUDA (about 1 s for
    131M elements on an H100), where a multi-block ``topk`` of the smaller side takes ~3 ms.
    """
    if flat.device.type == "cpu":
        if flat.dtype in (torch.float32, torch.int32) and flat.numel() >= _RADIX_MIN:
            bits = flat.view(torch.int32)
            if nonnegative or not bool((bits < 0).any()):  # magnitudes or their keys
                return _radix_kth(bits, k).view(flat.dtype).reshape(())
        return torch.kthvalue(flat, k).values
    n = flat.numel()
    if k <= n - k + 1:
        return torch.topk(flat, k, largest=False, sorted=False).values.max()
    return torch.topk(flat, n - k + 1, largest=True, sorted=False).values.min()


# Below this size kthvalue is as fast as the radix select.
_RADIX_MIN = 1 << 16


def _radix_kth(bits: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th smallest (1-based) of non-negative int32 keys, as a 1-element int32 tensor.

    Non-negative float32 values order exactly like their bit patterns, so two counting passes
    over 16-bit digits find the exact k-th value: about twice as fast as ``kthvalue`` on CPU,
    with no copy of the data.
    """
    high = bits >> 16  # (N,) top 15 bits (the sign bit is 0)
    cum = torch.bincount(high, minlength=1 << 15).cumsum(0)
    digit = int(torch.searchsorted(cum, torch.tensor(k)))
    before = int(cum[digit - 1]) if digit else 0
    low = bits[high == digit] & 0xFFFF  # keys sharing the k-th value's top digit
    cum_low = torch.bincount(low, minlength=1 << 16).cumsum(0)
    low_digit = int(torch.searchsorted(cum_low, torch.tensor(k - before)))
    return torch.tensor([(digit << 16) | low_digit], dtype=torch.int32)


_KEY_DTYPES = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _order_keys(scores: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Integer keys ordering like ``scores`` when they are magnitudes (non-negative floats,
    whose bit patterns order like their values), with NaN above +inf as in the CPU kernels,
    and True; scores with a sign bit set (or integers) are compared as values, and False."""
    if not scores.dtype.is_floating_point:
        return scores, False
    keys = scores.view(_KEY_DTYPES[scores.element_size()])
    return (scores, False) if bool((keys < 0).any()) else (keys, True)


def rank_window_mask(scores: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Boolean mask (same shape as ``scores``) of the elements of ascending rank ``[lo, hi)``.

    Exactly ``hi - lo`` elements are kept (after clipping to ``[0, N]``). Ties at either
    cut-off are broken by flat index: the first tied elements are dropped at the low end and
    the last ones at the high end. ``scores`` are magnitudes (``|δ|``, a variance); a NaN
    ranks above every number.
    """
    flat, keyed = _order_keys(scores.reshape(-1))
    n = flat.numel()
    lo, hi = max(lo, 0), min(hi, n)
    if hi <= lo:
        return torch.zeros_like(scores, dtype=torch.bool)
    if lo > 0 and hi == n:
        # The common case (top-k): one comparison pass, then drop surplus ties at the cut.
        cut = kth_smallest(flat, lo, nonnegative=keyed)
        keep = flat >= cut
        extra = int(keep.sum()) - (n - lo)
        if extra > 0:
            tied = torch.nonzero(flat == cut).reshape(-1)
            keep[tied[:extra]] = False
        return keep.reshape(scores.shape)
    keep = torch.ones(n, dtype=torch.bool, device=flat.device)
    if lo > 0:
        # The lo-th smallest value (1-based) is the largest one to drop.
        cut = kth_smallest(flat, lo, nonnegative=keyed)
        below = flat < cut
        keep &= ~below
        extra = lo - int(below.sum())
        if extra > 0:
            tied = torch.nonzero(flat == cut).reshape(-1)
            keep[tied[:extra]] = False
    if hi < n:
        # The (hi+1)-th smallest value is the smallest one to drop.
        cut = kth_smallest(flat, hi + 1, nonnegative=keyed)
        above = flat > cut
        keep &= ~above
        extra = (n - hi) - int(above.sum())
        if extra > 0:
            tied = torch.nonzero(flat == cut).reshape(-1)
            keep[tied[tied.numel() - extra :]] = False
    return keep.reshape(scores.shape)


def top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of exactly ``k`` elements with the largest scores."""
    n = scores.numel()
    return rank_window_mask(scores, n - k, n)


def _blocked_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum of a 1-D tensor in a fixed block order, accumulated in float64.

    The fixed blocks make it independent of the thread count; float64 accumulation makes the
    order a GPU reduces in irrelevant once the result is rounded to float32, so CPU and GPU
    runs rescale by the same factor.
    """
    v = values
    while v.numel() > _SUM_BLOCK:
        rows = v.numel() // _SUM_BLOCK
        # (rows, _SUM_BLOCK): each row is reduced by one thread.
        head = v[: rows * _SUM_BLOCK].reshape(rows, _SUM_BLOCK).sum(dim=1, dtype=torch.float64)
        tail = v[rows * _SUM_BLOCK :].sum(dtype=torch.float64).reshape(1)
        v = torch.cat([head, tail])
    return v.sum(dtype=torch.float64)


def l1_norm(x: torch.Tensor) -> torch.Tensor:
    """``sum |x|`` over the whole tensor (0-dim tensor), reproducible across thread counts."""
    return _blocked_sum(x.abs().reshape(-1))


def rescale_l1(original: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Scale ``masked`` in place so its L1 norm matches ``original``'s (MergeKit's rescale)."""
    old = l1_norm(original)
    new = l1_norm(masked)
    if not (float(old) >= RESCALE_EPS and float(new) >= RESCALE_EPS):  # tiny, or NaN: as is
        return masked
    return masked.mul_(float(old / new))  # one float32-rounded factor on every device


# A counter-based generator: element i of a stream is a pure function of (key, i), so any
# slice can be computed on its own, in parallel, on any device, with the same bits; the fused
# CPU kernels compute the same function. Each round is Chris Wellons' "lowbias32" integer
# hash (xor-shift-multiply); two rounds, the second keyed by the high half of the key and of
# the index, decorrelate the streams of different keys. 32-bit products vectorize on CPUs.
_MUL1 = 0x7FEB352D
_MUL2 = 0x846CA68B
_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int64 tensors holding 32-bit values."""
    x = x ^ (x >> 16)
    x = (x * _MUL1) & _MASK32
    x = x ^ (x >> 15)
    x = (x * _MUL2) & _MASK32
    return x ^ (x >> 16)


def hash32(key: int, start: int, end: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``h_i``, 32 random bits as int64, for ``start <= i < end`` of stream ``key``:
    ``h = mix32(mix32((i mod 2**32) ^ k0) ^ k1 ^ (i >> 32))`` with ``k0``/``k1`` the low and
    high 32 bits of ``key``."""
    i = torch.arange(start, end, dtype=torch.int64, device=device)
    k0, k1 = key & _MASK32, (key >> 32) & _MASK32
    h = _mix32((i & _MASK32) ^ k0)
    return _mix32(h ^ ((i >> 32) ^ k1))


def uniform(key: int, start: int, end: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``u_i ~ U[0, 1)`` (float32, 24 random bits) for ``start <= i < end`` of stream ``key``:
    ``u_i = (h_i >> 8) / 2**24`` with ``h`` from :func:`hash32`."""
    return (hash32(key, start, end, device) >> 8).to(torch.float32).mul_(2.0**-24)


def uniform_chunks(
    numel: int, key: int, device: torch.device | str
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield ``(start, end, u)``: :func:`uniform` over consecutive ranges of at most
    :data:`DRAW_CHUNK` elements (bounding the scratch memory)."""
    for start in range(0, numel, DRAW_CHUNK):
        end = min(numel, start + DRAW_CHUNK)
        yield start, end, uniform(key, start, end, device)


def magnitude(
    delta: torch.Tensor, density: float, rescale: bool, *, inplace: bool = False
) -> torch.Tensor:
    """Keep the ``max(1, floor(density*N))`` largest-magnitude elements (TIES).

    With ``inplace`` (the caller owns ``delta``), the dropped elements are zeroed in ``delta``
    itself instead of in a copy."""
    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    n = delta.numel()
    k = max(1, int(density * n))
    mask = top_k_mask(delta.abs(), k)
    if not rescale:
        return delta.mul_(mask) if inplace else delta * mask
    masked = delta * mask
    return rescale_l1(delta, masked)


def bernoulli(delta: torch.Tensor, density: float, rescale: bool, key: int) -> torch.Tensor:
    """Keep each element independently with probability ``density`` (DARE); element ``i``
    (flat index) is kept where ``uniform(key)[i] < density``."""
    if density >= 1:
        return delta
    flat = delta.reshape(-1)
    masked = torch.empty_like(flat)
    for start, end, u in uniform_chunks(flat.numel(), key, delta.device):
        # P(u < density) = density for u ~ U[0, 1): a Bernoulli(density) draw.
        masked[start:end] = flat[start:end] * (u < density)
    masked = masked.reshape(delta.shape)
    return rescale_l1(delta, masked) if rescale else masked


def magnitude_outliers(
    delta: torch.Tensor, density: float, gamma: float, rescale: bool
) -> torch.Tensor:
    """Model Breadcrumbs: drop the smallest and the largest magnitudes, keep a middle window."""
    n = delta.numel()
    target = int(density * n)
    if target <= 0:
        return torch.zeros_like(delta)
    n_top = int(gamma * n)
    n_bot = max(0, n - target - n_top)
    if n_bot == 0 and target >= n:
        return delta
    masked = delta * rank_window_mask(delta.abs(), n_bot, n_bot + target)
    return rescale_l1(delta, masked) if rescale else masked


def _as_rows(x: torch.Tensor) -> torch.Tensor:
    """A 2-D view ``(rows, n)`` whose rows are what DELLA ranks (MergeKit ranks along dim 1)."""
    if x.dim() <= 1:
        return x.reshape(1, -1)
    if x.dim() == 2:
        return x
    # (d0, d1, d2, ...) -> (d0*d2*..., d1): rank along dim 1 as MergeKit's argsort(dim=1) does.
    return x.movedim(1, -1).reshape(-1, x.shape[1])


def _from_rows(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if like.dim() <= 2:
        return rows.reshape(like.shape)
    moved = like.movedim(1, -1).shape
    return rows.reshape(moved).movedim(-1, 1)


def della_magprune(
    delta: torch.Tensor,
    density: float,
    epsilon: float,
    rescale: bool,
    key: int,
) -> torch.Tensor:
    """DELLA's MagPrune: keep probability grows linearly with the magnitude rank in each row.

    The element at row ``r``, column ``c`` of the row layout is kept where
    ``uniform(key)[r * n + c] < p``.

    The planner has checked ``0 < density - epsilon`` and ``density + epsilon < 1`` whenever
    ``density < 1``. A one-element row has no rank spread (MergeKit divides 0 by 0 and gets
    NaN); it is kept with probability ``density``, the midpoint of the range.
    """
    if density >= 1:
        return delta
    rows = _as_rows(delta)
    n_rows, n_cols = rows.shape
    out = torch.empty_like(rows)
    if rows.numel() == 0:
        return delta.clone()
    block = max(1, DRAW_CHUNK // max(n_cols, 1))
    for r0 in range(0, n_rows, block):
        r1 = min(n_rows, r0 + block)
        part = rows[r0:r1]  # (b, n_cols)
        if n_cols > 1:
            # stable: tied magnitudes get the same ranks on every device
            order = torch.argsort(part.abs(), dim=1, stable=True)
            ranks = torch.empty_like(part)
            # ranks[r, order[r, j]] = j: the 0-based ascending rank of each element.
            steps = torch.arange(n_cols, device=part.device, dtype=part.dtype)
            ranks.scatter_(1, order, steps.expand_as(part).contiguous())
            # One float32 multiplier instead of `ranks / (n-1) * 2ε`: CUDA divides by a scalar
            # through its reciprocal, which can land one ulp away from the CPU's division and
            # flip a draw; a multiply rounds the same on every device.
            keep_p = ranks.mul_(2 * epsilon / (n_cols - 1)).add_(density - epsilon)
        else:
            keep_p = torch.full_like(part, density)
        u = uniform(key, r0 * n_cols, r1 * n_cols, part.device)
        keep = u.reshape(part.shape) < keep_p
        out[r0:r1] = part * keep
    masked = _from_rows(out, delta)
    return rescale_l1(delta, masked) if rescale else masked
