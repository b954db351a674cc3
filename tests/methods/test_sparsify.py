"""Golden values for the sparsifiers (exact kept counts, windows, L1 rescaling)."""

from __future__ import annotations

import pytest
import torch

from meldkit.methods import sparsify
from tests.methods.helpers import t

D = t(3, -1, 2, 0.5, 0, -4)  # |D| = 3, 1, 2, 0.5, 0, 4; L1 = 10.5


def test_magnitude_keeps_top_k() -> None:
    # N = 6, density 0.5 -> k = 3: |.| = 4, 3, 2 survive
    assert torch.equal(sparsify.magnitude(D, 0.5, False), t(3, 0, 2, 0, 0, -4))


def test_magnitude_keeps_at_least_one() -> None:
    # density 0.1 -> floor(0.6) = 0 -> k = max(1, 0) = 1: only -4
    assert torch.equal(sparsify.magnitude(D, 0.1, False), t(0, 0, 0, 0, 0, -4))


def test_magnitude_density_bounds() -> None:
    assert sparsify.magnitude(D, 1.0, False) is D  # unchanged
    assert torch.equal(sparsify.magnitude(D, 0.0, False), torch.zeros(6))
    assert torch.equal(sparsify.magnitude(D, -0.5, False), torch.zeros(6))


def test_magnitude_rescale_matches_l1() -> None:
    # kept L1 = 3 + 2 + 4 = 9; factor 10.5 / 9 = 1.16666667
    f = 10.5 / 9
    torch.testing.assert_close(sparsify.magnitude(D, 0.5, True), t(3 * f, 0, 2 * f, 0, 0, -4 * f))


def test_magnitude_ties_keep_exact_count() -> None:
    # four elements tie at |1|; density 0.4 of 5 -> k = 2 exactly
    x = t(1, -1, 1, -1, 0.5)
    out = sparsify.magnitude(x, 0.4, False)
    assert int((out != 0).sum()) == 2 and float(out.abs().sum()) == 2.0


def test_magnitude_ties_at_zero_count() -> None:
    x = torch.zeros(10)
    x[3] = 5.0
    out = sparsify.magnitude(x, 0.5, False)  # k = 5: one nonzero plus four zeros
    assert torch.equal(out, x)


def test_top_k_mask_exact_count_with_many_ties() -> None:
    scores = torch.tensor([2.0] * 50 + [1.0] * 50 + [3.0] * 10)
    for k in (0, 5, 10, 11, 60, 61, 110):
        mask = sparsify.top_k_mask(scores, k)
        assert int(mask.sum()) == k
        if 0 < k <= 10:
            assert bool((scores[mask] == 3.0).all())


def test_rank_window_exact_counts_with_ties() -> None:
    scores = torch.tensor([1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 3.0, 3.0])
    for lo, hi in [(0, 8), (1, 5), (2, 3), (3, 6), (4, 4), (0, 2), (6, 8), (5, 7)]:
        mask = sparsify.rank_window_mask(scores, lo, hi)
        assert int(mask.sum()) == hi - lo
        kept = torch.sort(scores[mask]).values
        assert torch.equal(kept, torch.sort(scores).values[lo:hi])


# |B| are 0.1 .. 1.0, all distinct; ascending rank r holds |.| = (r+1)/10.
B = t(0.1, -0.9, 0.5, 0.3, -0.7, 0.2, 0.8, -0.4, 0.6, 1.0)


def test_breadcrumbs_window() -> None:
    # N=10, density 0.5, gamma 0.2: target 5, n_top 2, n_bot = 10-5-2 = 3 -> ranks [3, 8)
    # = |.| 0.4 .. 0.8 -> -0.4 (idx 7), 0.5 (2), 0.6 (8), -0.7 (4), 0.8 (6)
    out = sparsify.magnitude_outliers(B, 0.5, 0.2, False)
    assert torch.equal(out, t(0, 0, 0.5, 0, -0.7, 0, 0.8, -0.4, 0.6, 0))


def test_breadcrumbs_gamma_zero_still_keeps_target() -> None:
    # 0.1.4 sliced [n_bot:-0] and kept nothing. n_top 0, n_bot 5 -> ranks [5, 10)
    out = sparsify.magnitude_outliers(B, 0.5, 0.0, False)
    assert torch.equal(out, t(0, -0.9, 0, 0, -0.7, 0, 0.8, 0, 0.6, 1.0))


def test_breadcrumbs_n_bot_clamped_at_zero() -> None:
    # density 0.9 -> target 9, n_top 2, n_bot = max(0, -1) = 0 -> ranks [0, 9): drop the 1.0
    out = sparsify.magnitude_outliers(B, 0.9, 0.2, False)
    assert torch.equal(out, t(0.1, -0.9, 0.5, 0.3, -0.7, 0.2, 0.8, -0.4, 0.6, 0))


def test_breadcrumbs_floors() -> None:
    # density 0.55 -> floor(5.5) = 5; gamma 0.15 -> floor(1.5) = 1; n_bot = 4 -> ranks [4, 9)
    out = sparsify.magnitude_outliers(B, 0.55, 0.15, False)
    assert torch.equal(out, t(0, -0.9, 0.5, 0, -0.7, 0, 0.8, 0, 0.6, 0))


def test_breadcrumbs_density_bounds() -> None:
    assert torch.equal(sparsify.magnitude_outliers(B, 0.0, 0.01, False), torch.zeros(10))
    assert torch.equal(sparsify.magnitude_outliers(B, 1.0, 0.0, False), B)


def test_breadcrumbs_rescale() -> None:
    # window [3, 8) keeps L1 0.4+0.5+0.6+0.7+0.8 = 3.0 of 5.5 -> factor 5.5/3
    out = sparsify.magnitude_outliers(B, 0.5, 0.2, True)
    f = 5.5 / 3.0
    torch.testing.assert_close(out, t(0, 0, 0.5 * f, 0, -0.7 * f, 0, 0.8 * f, -0.4 * f, 0.6 * f, 0))


def test_rescale_skipped_for_tiny_norms() -> None:
    x = t(1e-9, 0, 0)
    assert torch.equal(sparsify.rescale_l1(x, x * 0), t(0, 0, 0))


def test_l1_norm_exact_on_large_tensor() -> None:
    x = torch.ones(100_003)
    assert float(sparsify.l1_norm(x)) == 100_003.0


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4)])
def test_della_keeps_shape_and_values(shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    out = sparsify.della_magprune(x, 0.5, 0.2, False, 1)
    assert out.shape == x.shape
    kept = out != 0
    assert torch.equal(out[kept], x[kept])


def test_kth_smallest() -> None:
    x = t(5, 1, 4, 1, 3)
    # ascending: 1, 1, 3, 4, 5
    assert [float(sparsify.kth_smallest(x, k)) for k in range(1, 6)] == [1, 1, 3, 4, 5]
