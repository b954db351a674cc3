"""The fast path of the task-vector family (task_arithmetic, ties, dare_*, breadcrumbs*,
della*): a few fused numba passes over the stored inputs.

:func:`merge_task_vectors_fused` computes exactly what
:func:`meldkit.methods.task_vectors.merge_task_vectors` computes (same operations, same
rounding, same random streams, same tie rule) but never makes a float32 copy of a whole input
or delta. For a tensor of ``N`` elements and ``M`` models it makes, over the inputs as stored:

1. TIES / Breadcrumbs: two histogram passes that locate each model's exact cut-off(s) in
   ``|δ|`` (the radix select of :mod:`meldkit.methods.sparsify`), plus a counting pass per
   chunk when only some elements tied at a cut-off survive;
   DELLA: the random keep masks from per-row ranks, packed 8 per byte (DARE draws inline, from
   the same counter-based stream as the eager path);
2. with ``rescale``: one pass of float64 L1 sums;
3. one pass that sparsifies, rescales, weights, elects signs, mixes and writes the output in
   its final dtype.

Memory is the stored inputs (which the engine holds anyway) plus the output, DELLA's masks at
one bit per element and per model, and histograms. The work is split over torch's thread
count in fixed chunks, so the bytes do not depend on it. :func:`available` says whether numba is installed;
when it is not, or for inputs the kernels do not cover (float64, other devices, DELLA on
tensors of more than two dimensions), the eager path runs instead. float16 inputs, and inputs
of mixed dtypes, are widened to float32 first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np
import torch

from meldkit.kernels import runner
from meldkit.methods import sparsify
from meldkit.methods.inputs import Operand, non_base, output_dtype, param_float
from meldkit.methods.registry import FastPath, MergeContext
from meldkit.methods.task_vector_family import TASK_VECTOR_FAMILY, TaskVectorVariant

__all__ = ["available", "kernels", "supports", "merge_task_vectors_fused", *TASK_VECTOR_FAMILY]

_HIGH = 1 << 15  # |δ| bits have a 0 sign bit: 15 high-digit bits
_LOW = 1 << 16


def kernels() -> ModuleType | None:
    """The numba kernels module, or None when numba cannot be imported."""
    return runner.load("task_vectors_numba")


def available() -> bool:
    """Whether the fused CPU kernels can run here."""
    return kernels() is not None


def supports(variant: TaskVectorVariant, inputs: Sequence[torch.Tensor], ctx: MergeContext) -> bool:
    """Whether :func:`merge_task_vectors_fused` covers this call."""
    if not available() or not runner.cpu_tensors(inputs, ctx.device):
        return False
    shape = inputs[0].shape
    if variant.sparsifier == "della_magprune":
        # DELLA ranks within rows; other layouts (and one-column rows) stay on the eager path.
        return len(shape) in (1, 2) and (shape[-1] if shape else 1) > 1
    return True


def _each_range(
    fn: Callable[..., Any],
    parts: list[tuple[int, int]],
    xs: tuple[np.ndarray, ...],
    base: np.ndarray,
    hists: np.ndarray,
    *extra: Any,
) -> None:
    """``fn(xs, base, a, b, *extra, hists[p])`` for each part ``p = [a, b)``, in parallel: each
    thread counts into its own histogram (summed afterwards; counts do not depend on order)."""
    runner.run_all([(fn, (xs, base, a, b, *extra, hists[p])) for p, (a, b) in enumerate(parts)])


class _Cuts:
    """Per-model cut-offs of the WINDOW mode, as float32 bits of ``|δ|``: ``cuts[j, 0]`` (the
    low cut, the largest dropped value) and ``cuts[j, 1]`` (the high cut, the smallest dropped
    value), with the eager path's tie rule.

    Unused cuts take neutral values (0 with nothing dropped; all ones with everything kept).
    ``rule[j]`` is (ties dropped at the low cut, the first ones; ties kept at the high cut, the
    first ones); ``partial[j, k]`` says some but not all ties at cut ``k`` survive, which needs
    ordinals; otherwise ``thr[j]`` gives the inclusive range of kept bits."""

    def __init__(self, m: int) -> None:
        self.cuts = np.zeros((m, 2), dtype=np.uint32)
        self.cuts[:, 1] = 0xFFFFFFFF
        self.thr = np.zeros((m, 2), dtype=np.int64)
        self.thr[:, 1] = 0xFFFFFFFF
        self.rule = np.zeros((m, 2), dtype=np.int64)
        self.rule[:, 1] = np.iinfo(np.int64).max
        self.partial = np.zeros((m, 2), dtype=np.bool_)

    def set_low(self, j: int, cut: int, drop: int, equal: int) -> None:
        self.cuts[j, 0] = cut
        self.rule[j, 0] = drop
        self.partial[j, 0] = 0 < drop < equal
        self.thr[j, 0] = cut if drop == 0 else cut + 1

    def set_high(self, j: int, cut: int, keep: int, equal: int) -> None:
        self.cuts[j, 1] = cut
        self.rule[j, 1] = keep
        self.partial[j, 1] = 0 < keep < equal
        self.thr[j, 1] = cut if keep >= equal else cut - 1


def _windows(
    variant: TaskVectorVariant, others: Sequence[Operand], n: int
) -> list[tuple[int, int] | None]:
    """Per model, the ascending-rank window ``[lo, hi)`` kept, or None when not WINDOW."""
    out: list[tuple[int, int] | None] = []
    for o in others:
        density = param_float(o.params, "density", 1.0)
        if variant.sparsifier == "magnitude":
            if density >= 1 or density <= 0:
                out.append(None)
                continue
            k = max(1, int(density * n))
            out.append((n - k, n))
        elif variant.sparsifier == "magnitude_outliers":
            target = int(density * n)
            n_top = int(param_float(o.params, "gamma", 0.01) * n)
            n_bot = max(0, n - target - n_top)
            if target <= 0 or (n_bot == 0 and target >= n):
                out.append(None)
                continue
            out.append((n_bot, min(n, n_bot + target)))
        else:
            out.append(None)
    return out


def _locate_cuts(
    module: ModuleType,
    xs: tuple[np.ndarray, ...],
    base: np.ndarray,
    windows: list[tuple[int, int] | None],
) -> _Cuts:
    """Find each window's cut-offs exactly with two digit histograms of ``|δ|`` (radix select).

    The low cut is the ``lo``-th smallest value (the largest dropped), the high cut the
    ``(hi+1)``-th smallest (the smallest dropped)."""
    m = len(xs)
    n = base.shape[0]
    parts = runner.ranges(n)
    high = runner.zeroed_scratch("high", (len(parts), m, _HIGH))
    _each_range(module.hist_high, parts, xs, base, high)
    cum_high = high.sum(axis=0).cumsum(axis=1)
    ranks = np.full((m, 2), -1, dtype=np.int64)  # 1-based rank of each cut-off value
    for j, w in enumerate(windows):
        if w is None:
            continue
        lo, hi = w
        if lo > 0:
            ranks[j, 0] = lo
        if hi < n:
            ranks[j, 1] = hi + 1
    digits = np.full((m, 2), -1, dtype=np.int64)
    before = np.zeros((m, 2), dtype=np.int64)
    for j in range(m):
        for k in range(2):
            if ranks[j, k] > 0:
                d = int(np.searchsorted(cum_high[j], ranks[j, k]))
                digits[j, k] = d
                before[j, k] = cum_high[j, d - 1] if d else 0
    low = runner.zeroed_scratch("low", (len(parts), m, 2, _LOW))
    _each_range(module.hist_low, parts, xs, base, low, digits)
    cuts = _Cuts(m)
    for j in range(m):
        for k in range(2):
            if digits[j, k] < 0:
                continue
            counts = low[:, j, k].sum(axis=0)
            cum_low = counts.cumsum()
            rest = ranks[j, k] - before[j, k]
            d_low = int(np.searchsorted(cum_low, rest))
            below = int(before[j, k] + (cum_low[d_low - 1] if d_low else 0))
            equal = int(counts[d_low])
            cut = (int(digits[j, k]) << 16) | d_low
            lo, hi = windows[j]  # type: ignore[misc]
            if k == 0:
                cuts.set_low(j, cut, lo - below, equal)  # the lo-th smallest is the largest dropped
            else:
                above = n - below - equal
                cuts.set_high(j, cut, equal - ((n - hi) - above), equal)
    return cuts


def _chunk_ties(
    module: ModuleType, xs: tuple[np.ndarray, ...], base: np.ndarray, cuts: _Cuts, n_chunks: int
) -> np.ndarray:
    """``ties[c, j, k] = (ties at cut-off k of model j before chunk c, ties inside chunk c)``,
    counted in flat order, for the cut-offs with a partial tie (zeros elsewhere)."""
    m = len(xs)
    ties = np.zeros((n_chunks, m, 2, 2), dtype=np.int64)
    if cuts.partial.any():
        counts = np.zeros((n_chunks, m, 2), dtype=np.int64)
        runner.parallel(module.tie_counts, n_chunks, xs, base, cuts.cuts, cuts.partial, counts)
        ties[1:, :, :, 0] = counts.cumsum(axis=0)[:-1]
        ties[:, :, :, 1] = counts
    return ties


def _random_masks(
    module: ModuleType,
    variant: TaskVectorVariant,
    others: Sequence[Operand],
    xs: tuple[np.ndarray, ...],
    base: np.ndarray,
    shape: torch.Size,
    ctx: MergeContext,
    modes: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """DARE / DELLA: per model ``(k0, k1, density)`` of its stream (one per input, keyed as
    in the eager path) and, for DELLA, the packed keep masks (1 = kept) and the L1 norms
    ``(Σ|δ|, Σ|kept δ|)`` of each model (None for DARE); sets ``modes``."""
    n = base.shape[0]
    rand = np.zeros((len(others), 3), dtype=np.float64)
    della = variant.sparsifier == "della_magprune"
    bits = np.zeros((len(others), (n + 7) // 8 if della else 0), dtype=np.uint8)
    norms = np.zeros((len(others), 2), dtype=np.float64)
    for j, o in enumerate(others):
        density = param_float(o.params, "density", 1.0)
        if density >= 1:
            continue
        k0, k1 = runner.key_halves(ctx.stream_key(str(o.index)))
        rand[j] = (k0, k1, np.float32(density))
        if not della:
            modes[j] = module.BERNOULLI
            continue
        modes[j] = module.BITS
        epsilon = param_float(o.params, "epsilon", 0.15)
        n_cols = shape[-1] if len(shape) == 2 else n
        step = np.float32(2 * epsilon / (n_cols - 1))
        n_rows = n // n_cols
        groups = -(-n_rows // 8)  # rows in groups of 8: whole bytes of the mask
        row_sums = np.empty((n_rows, 2), dtype=np.float64)
        runner.parallel(
            module.della_bits,
            groups,
            xs[j],
            base,
            k0,
            k1,
            n_cols,
            np.float32(density - epsilon),
            step,
            bits[j],
            row_sums,
        )
        norms[j] = row_sums.sum(axis=0)  # a fixed order of rows: thread-count independent
    return rand, bits, (norms if della else None)


def merge_task_vectors_fused(
    base_t: torch.Tensor,
    others: Sequence[Operand],
    variant: TaskVectorVariant,
    shared: Mapping[str, Any],
    ctx: MergeContext,
) -> torch.Tensor:
    """The family member ``variant`` of ``others`` over ``base_t`` (see the module docstring);
    returns float32, or bfloat16 when ``ctx.out_dtype`` asks for it (rounded once)."""
    module = kernels()
    assert module is not None
    shape = base_t.shape
    n = base_t.numel()
    m = len(others)
    *stored, base = runner.stored_arrays([o.tensor for o in others] + [base_t])
    xs = tuple(stored)
    normalize = bool(shared.get("normalize", variant.normalize))
    rescale = bool(shared.get("rescale", variant.rescale))
    lam = param_float(shared, "lambda", 1.0)
    weights = [param_float(o.params, "weight", 1.0) for o in others]
    n_chunks = runner.chunk_count(n, module.CHUNK)

    modes = np.full(m, module.KEEP_ALL, dtype=np.int64)
    cuts = _Cuts(m)
    bits = np.zeros((m, 0), dtype=np.uint8)
    rand = np.zeros((m, 3), dtype=np.float64)
    norms = None  # (Σ|δ|, Σ|kept δ|) per model, when the sparsifier computed them
    if variant.sparsifier in ("magnitude", "magnitude_outliers"):
        windows = _windows(variant, others, n)
        for j, (o, w) in enumerate(zip(others, windows)):
            if w is not None:
                modes[j] = module.WINDOW
            elif _zeroed(variant, o, n):
                modes[j] = module.ZERO
        if any(w is not None for w in windows):
            cuts = _locate_cuts(module, xs, base, windows)
    elif variant.sparsifier in ("random", "della_magprune"):
        rand, bits, norms = _random_masks(module, variant, others, xs, base, shape, ctx, modes)
    ties = _chunk_ties(module, xs, base, cuts, n_chunks)

    scale = np.ones(m, dtype=np.float32)
    has_scale = np.zeros(m, dtype=np.bool_)
    if rescale and ((modes != module.KEEP_ALL) & (modes != module.ZERO)).any():
        if norms is not None:
            totals = norms
        else:
            sums = np.zeros((n_chunks, m, 2), dtype=np.float64)
            runner.parallel(
                module.l1_sums,
                n_chunks,
                xs,
                base,
                modes,
                cuts.cuts,
                cuts.thr,
                cuts.rule,
                cuts.partial,
                ties,
                bits,
                rand,
                sums,
            )
            totals = sums.sum(axis=0)  # fixed chunks, summed in order: thread-count independent
        for j in range(m):
            old, new = float(totals[j, 0]), float(totals[j, 1])
            if (
                modes[j] in (module.WINDOW, module.BITS, module.BERNOULLI)
                and old >= sparsify.RESCALE_EPS
                and new >= sparsify.RESCALE_EPS
            ):
                scale[j] = np.float32(old / new)
                has_scale[j] = True

    # As the eager path: the weights as a float32 tensor; the divisor without sign election
    # is their sum, 1 when it is (nearly) zero.
    w_tensor = torch.tensor(weights, dtype=torch.float32)
    divisor = w_tensor.sum()
    if float(divisor.abs()) < 1e-8:
        divisor = torch.ones_like(divisor)
    out = runner.output_buffer(n, output_dtype([base_t], ctx.out_dtype))
    runner.parallel(
        module.mix,
        n_chunks,
        xs,
        base,
        runner.as_numpy(out),
        out.dtype == torch.bfloat16,
        modes,
        cuts.cuts,
        cuts.thr,
        cuts.rule,
        cuts.partial,
        ties,
        bits,
        rand,
        scale,
        has_scale,
        w_tensor.numpy(),
        variant.consensus,
        normalize,
        np.float32(divisor.item()),
        np.float32(lam),
        lam != 1,
    )
    return out.reshape(shape)


def _zeroed(variant: TaskVectorVariant, operand: Operand, n: int) -> bool:
    """Whether the sparsifier returns literal zeros (``zeros_like``) for this model."""
    density = param_float(operand.params, "density", 1.0)
    if variant.sparsifier == "magnitude":
        return density <= 0
    return int(density * n) <= 0  # magnitude_outliers


def _member(method: str) -> FastPath:
    """The fast path of the family member ``method``."""
    variant = TASK_VECTOR_FAMILY[method]

    def covers(
        inputs: Sequence[torch.Tensor],
        base_index: int | None,
        shared: Mapping[str, Any],
        per_input: Sequence[Mapping[str, Any]],
        ctx: MergeContext,
    ) -> bool:
        return base_index is not None and len(inputs) > 1 and supports(variant, inputs, ctx)

    def merge(
        inputs: Sequence[torch.Tensor],
        base_index: int | None,
        shared: Mapping[str, Any],
        per_input: Sequence[Mapping[str, Any]],
        ctx: MergeContext,
    ) -> torch.Tensor:
        assert base_index is not None
        others = non_base(inputs, base_index, per_input)
        return merge_task_vectors_fused(inputs[base_index], others, variant, shared, ctx)

    return FastPath(covers, merge)


task_arithmetic = _member("task_arithmetic")
ties = _member("ties")
dare_ties = _member("dare_ties")
dare_linear = _member("dare_linear")
breadcrumbs = _member("breadcrumbs")
breadcrumbs_ties = _member("breadcrumbs_ties")
della = _member("della")
della_linear = _member("della_linear")
