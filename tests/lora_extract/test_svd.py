"""The factorisation: randomized where it is accurate, full SVD otherwise, against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meldkit.extract_lora.svd import low_rank_factors


def _matrix(spectrum: np.ndarray, rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """U diag(spectrum) V^T with random orthonormal U, V: a known spectrum."""
    rng = np.random.default_rng(seed)
    u = np.linalg.qr(rng.standard_normal((rows, len(spectrum))))[0]
    v = np.linalg.qr(rng.standard_normal((cols, len(spectrum))))[0]
    return torch.from_numpy((u * spectrum) @ v.T).float()


def _numpy_truncated(delta: torch.Tensor, r: int) -> np.ndarray:
    u, s, vt = np.linalg.svd(delta.double().numpy(), full_matrices=False)
    return (u[:, :r] * s[:r]) @ vt[:r]


def test_energy_rule_finds_the_rank_of_a_low_rank_delta_randomized():
    delta = _matrix(np.array([5.0, 4, 3, 2, 1, 0.5, 0.25]), 160, 120)
    f = low_rank_factors(delta, name="m", max_rank=None, energy=0.999)
    assert f.method == "randomized" and f.rank == 7
    assert f.energy == pytest.approx(1.0, abs=1e-6)
    f = low_rank_factors(delta, name="m", max_rank=None, energy=0.99)
    # the smallest k whose sum(s_i^2, i <= k) reaches 0.99 of 55.3125 (k = 5)
    kept = np.cumsum(np.array([25.0, 16, 9, 4, 1, 0.25, 0.0625]))
    assert f.rank == int(np.argmax(kept >= 0.99 * kept[-1])) + 1


def test_fixed_rank_randomized_matches_numpy_on_a_decaying_spectrum():
    delta = _matrix(0.7 ** np.arange(100), 160, 120)
    f = low_rank_factors(delta, name="m", max_rank=8, energy=None)
    assert f.method == "randomized" and f.rank == 8
    want = _numpy_truncated(delta, 8)
    np.testing.assert_allclose((f.b @ f.a).double().numpy(), want, atol=1e-5 * np.abs(want).max())


def test_flat_spectrum_falls_back_to_the_full_svd():
    delta = torch.randn(160, 120, generator=torch.Generator().manual_seed(1))
    f = low_rank_factors(delta, name="m", max_rank=8, energy=None)
    assert f.method == "full"
    want = _numpy_truncated(delta, 8)
    np.testing.assert_allclose((f.b @ f.a).double().numpy(), want, atol=1e-4 * np.abs(want).max())


def test_energy_is_exact_for_the_factors_returned():
    delta = _matrix(0.9 ** np.arange(100), 160, 130, seed=3)
    for energy in (0.5, 0.9, 0.99):
        f = low_rank_factors(delta, name="m", max_rank=None, energy=energy)
        residual = float((delta - f.b @ f.a).double().square().sum()) / f.total
        assert 1 - f.energy == pytest.approx(residual, rel=1e-3, abs=1e-7)
        assert f.energy >= energy


def test_seeded_and_order_independent():
    delta = _matrix(0.7 ** np.arange(100), 160, 120)
    one = low_rank_factors(delta, name="a", max_rank=8, energy=None, seed=5)
    two = low_rank_factors(delta.clone(), name="a", max_rank=8, energy=None, seed=5)
    assert torch.equal(one.a, two.a) and torch.equal(one.b, two.b)


def test_sv_epsilon_zero_delta_and_no_distribute_scale():
    delta = _matrix(np.array([3.0, 2.0, 1e-3]), 40, 30)
    assert low_rank_factors(delta, name="m", max_rank=10, energy=None, sv_epsilon=0.01).rank == 2
    assert low_rank_factors(torch.zeros(8, 6), name="m", max_rank=4, energy=None).rank == 0
    f = low_rank_factors(delta, name="m", max_rank=2, energy=None, distribute_scale=False)
    # B = U (orthonormal columns), A = S V^T
    torch.testing.assert_close(f.b.T @ f.b, torch.eye(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(f.a.norm(dim=1), torch.tensor([3.0, 2.0]), atol=1e-5, rtol=0)


def test_unchecked_randomized_reports_its_own_exact_error():
    delta = torch.randn(160, 120, generator=torch.Generator().manual_seed(1))
    f = low_rank_factors(delta, name="m", max_rank=8, energy=None, svd="randomized")
    assert f.method == "randomized" and f.rank == 8
    residual = float((delta - f.b @ f.a).double().square().sum()) / f.total
    assert 1 - f.energy == pytest.approx(residual, rel=1e-4)
    # on a flat spectrum it keeps less than the optimum, but not much less
    s = np.linalg.svd(delta.double().numpy(), compute_uv=False)
    best = (s[:8] ** 2).sum() / (s**2).sum()
    assert 0.8 * best < f.energy <= best + 1e-6
