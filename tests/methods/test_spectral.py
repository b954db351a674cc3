"""The spectral helpers: which factorisation each shape gets, and that the Gram and
randomized routes agree with the exact SVD where they are used."""

from __future__ import annotations

import pytest
import torch

from meldkit.methods import spectral
from meldkit.methods.registry import MergeContext


def _matrix(shape: tuple[int, int], decay: float, seed: int) -> torch.Tensor:
    """``U diag(decay^i) Vᵀ`` with random orthonormal ``U``, ``V`` (float32)."""
    g = torch.Generator().manual_seed(seed)
    r = min(shape)
    u, _ = torch.linalg.qr(torch.randn(shape[0], r, generator=g))
    v, _ = torch.linalg.qr(torch.randn(shape[1], r, generator=g))
    return (u * decay ** torch.arange(r, dtype=torch.float32)) @ v.T


@pytest.mark.parametrize(
    ("shape", "k", "route"),
    [
        ((1536, 1536), 512, "gram"),  # TSV-M, T = 3: a third of the spectrum
        ((1536, 1536), 1536, "exact"),  # Iso-C on a square matrix: the whole spectrum
        ((32000, 1536), 1536, "gram"),  # Iso-C on an embedding: 20x longer than wide
        ((1536, 12288), 1536, "gram"),  # exactly GRAM_MIN_ASPECT
        ((1536, 12287), 1536, "exact"),
        ((4096, 1536), 1536, "exact"),  # an MLP matrix: 2.7x longer than wide
        ((1536, 1536), 102, "randomized"),  # Iso-CTS's per-task part: 4·(102 + 10) ≤ 1536
        ((1536, 1536), 375, "gram"),  # 4·(375 + 10) > 1536
        ((200, 200), 5, "gram"),  # below RANDOMIZED_MIN_RANK
        ((10, 10), 50, "exact"),  # k is capped at the rank
    ],
)
def test_svd_route(shape: tuple[int, int], k: int, route: str) -> None:
    assert spectral.svd_route(shape, k) == route


@pytest.mark.parametrize("shape", [(120, 80), (80, 120)])
def test_gram_top_svd_matches_the_exact_one(shape: tuple[int, int]) -> None:
    m = _matrix(shape, 0.97, seed=1)  # σ_k / σ_1 = 0.97^29 = 0.41: well inside the rule
    k = 30
    assert spectral.svd_route(shape, k) == "gram"
    u, s, vh = spectral.top_svd(m, k, MergeContext("w"), "t")
    assert u.shape == (shape[0], k) and s.shape == (k,) and vh.shape == (k, shape[1])
    eu, es, evh = torch.linalg.svd(m.double(), full_matrices=False)
    torch.testing.assert_close(s.double(), es[:k], rtol=1e-5, atol=0)
    # The same top-k subspaces (projectors, so signs and rotations inside ties do not count).
    proj = lambda a: a.double() @ a.double().T  # noqa: E731
    torch.testing.assert_close(proj(u), proj(eu[:, :k]), atol=1e-5, rtol=0)
    torch.testing.assert_close(proj(vh.T), proj(evh[:k].T), atol=1e-5, rtol=0)
    torch.testing.assert_close(u.T @ u, torch.eye(k), atol=1e-5, rtol=0)


def test_gram_route_falls_back_to_the_exact_svd_when_the_spectrum_is_too_wide() -> None:
    # σ_k / σ_1 = 0.5^29 ≈ 2e-9, so λ_k / λ_1 ≈ 3e-18 < GRAM_MIN_RATIO: even a float64 Gram
    # would lose the k-th direction, so the exact SVD is computed, bit for bit.
    m = _matrix((100, 60), 0.5, seed=2)
    got = spectral.top_svd(m, 30, MergeContext("w"), "t")
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    for a, b in zip(got, (u[:, :30], s[:30], vh[:30]), strict=True):
        assert torch.equal(a, b)
    zero = spectral.top_svd(torch.zeros(20, 10), 3, MergeContext("w"), "t")
    assert torch.equal(zero[1], torch.zeros(3))  # a zero matrix: the exact SVD, no NaN


def test_gram_route_falls_back_to_the_exact_svd_for_a_tiny_spectrum() -> None:
    # One entry of 2^-126 (float32's smallest normal): its float64 Gram value 2^-252 passes the
    # ratio test, but σ = 2^-126 scaled products would be subnormal (the hypothesis example
    # that once gave NaN); the exact SVD is computed instead, bit for bit, and stays finite.
    m = torch.zeros(2, 3)
    m[1, 2] = torch.finfo(torch.float32).tiny
    got = spectral.top_svd(m, 1, MergeContext("w"), "t")
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    for a, b in zip(got, (u[:, :1], s[:1], vh[:1]), strict=True):
        assert torch.equal(a, b)
    assert all(bool(torch.isfinite(x).all()) for x in got)


@pytest.mark.parametrize("shape", [(800, 100), (100, 800)])
def test_gram_polar_matches_the_svd_polar(shape: tuple[int, int]) -> None:
    m = _matrix(shape, 0.99, seed=3)  # κ = 0.99^-99 ≈ 2.7: the Gram route
    factor, s = spectral.polar_and_spectrum(m)
    p, es, qh = torch.linalg.svd(m.double(), full_matrices=False)
    torch.testing.assert_close(factor.double(), p @ qh, atol=1e-5, rtol=0)
    torch.testing.assert_close(s.double(), es, rtol=1e-5, atol=0)
    small = min(shape)
    gram = factor.T @ factor if shape[0] > shape[1] else factor @ factor.T
    torch.testing.assert_close(gram, torch.eye(small), atol=1e-5, rtol=0)


def test_polar_of_an_ill_conditioned_tall_matrix_is_the_exact_one() -> None:
    m = _matrix((800, 100), 0.8, seed=4)  # κ = 0.8^-99 ≈ 4e9: the exact SVD
    p, _, qh = torch.linalg.svd(m, full_matrices=False)
    assert torch.equal(spectral.polar(m), p @ qh)


def test_randomized_route_is_reproducible_and_ignores_the_seed() -> None:
    m = _matrix((400, 300), 0.95, seed=5)
    a = spectral.top_svd(m, 20, MergeContext("w", seed=0), "t")
    b = spectral.top_svd(m.clone(), 20, MergeContext("w", seed=123), "t")
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    # Another tensor name draws another sketch: same subspace, other rounding.
    c = spectral.top_svd(m, 20, MergeContext("other"), "t")
    assert not torch.equal(a[0], c[0])
    torch.testing.assert_close(c[1], a[1], rtol=1e-4, atol=0)


def test_merge_matrices_applies_the_non_matrix_rule_and_the_scale() -> None:
    b = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    xs = [b + 1, b + 3]

    def delta(taus: list[torch.Tensor]) -> torch.Tensor:
        return taus[0] * 10  # τ_1 · 10 = 10 everywhere

    per_input = [{}, {"weight": 2.0}, {}]
    args = ([b, *xs], 0, {"lam": 0.5}, per_input)
    got = spectral.merge_matrices(*args, MergeContext("w"), delta, scale="lam")
    torch.testing.assert_close(got, b + 0.5 * 20)  # weighted: τ_1 = 2 · 1
    head = spectral.merge_matrices(
        [b, *xs],
        0,
        {"lam": 0.5, "embeddings": "mean"},
        per_input,
        MergeContext("lm_head.weight"),
        delta,
        scale="lam",
        weighted=False,
    )
    torch.testing.assert_close(head, b + 0.5 * 2)  # mean of τ = 1 and 3


def test_tsv_through_the_gram_route_matches_float64_on_low_rank_plus_noise() -> None:
    # Task vectors as fine-tunes make them: a few strong directions over a noise floor 100x
    # lower. TSV-M's k = r/T reaches into the floor, and the polar factor mixes every column,
    # so a float32 Gram (which loses the floor's directions) moved the result by 4-12%; the
    # float64 Gram agrees with a float64 SVD better than float32's own SVD does.
    from meldkit.methods.tsv import tsv_delta

    g = torch.Generator().manual_seed(6)
    taus = []
    for t in range(3):
        low = torch.randn(120, 4, generator=g) @ torch.randn(4, 90, generator=g)
        taus.append((low * 1e-3 + torch.randn(120, 90, generator=g) * 2e-4) * (1.0 + t))
    assert spectral.svd_route((120, 90), 30) == "gram"
    got = tsv_delta(taus, None, MergeContext("w"))
    want = tsv_delta([x.double() for x in taus], None, MergeContext("w"))  # float64: exact
    assert float((got.double() - want).norm() / want.norm()) < 1e-5


@pytest.mark.parametrize("shape", [(50, 7), (7, 50)])
def test_the_float64_gram_is_summed_in_blocks_of_the_long_side(
    shape: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    from meldkit.methods import spectral as module

    m = torch.randn(shape, generator=torch.Generator().manual_seed(8))
    monkeypatch.setattr(module, "_GRAM_BLOCK", 16)  # 4 blocks, the last one short
    got = module._gram64(m)
    wide = m.double()
    want = wide.T @ wide if shape[0] > shape[1] else wide @ wide.T
    assert got.dtype == torch.float64 and got.shape == (7, 7)
    torch.testing.assert_close(got, want, rtol=1e-14, atol=1e-14)
