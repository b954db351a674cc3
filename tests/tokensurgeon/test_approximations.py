"""The approximation methods on small hand-made tensors, against values worked out by hand."""

from __future__ import annotations

import pytest
import torch

from meldkit.tokensurgeon.approximate import (
    interpolation_weights,
    statistical_rows,
    subword_combination,
)
from meldkit.tokensurgeon.omp import batched_omp
from meldkit.tokensurgeon.options import SurgeonOptions

MODEL_ROWS = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
MODEL_IDS = torch.tensor([0, 1, 2])


def _combine(atoms, x, **kw):
    combo = interpolation_weights(atoms, MODEL_IDS, x, SurgeonOptions(**kw))
    return combo.apply(MODEL_ROWS)


def test_distance_proportional_weights_are_normalised_inverse_distances():
    atoms = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    # distances from (1, 0): 1, 2, sqrt(17); the 2 nearest get 1/1 and 1/2, normalised
    rows = _combine(atoms, torch.tensor([[1.0, 0.0]]), k=2)
    torch.testing.assert_close(rows, torch.tensor([[2 / 3, 1 / 3, 0.0]]))


def test_cosine_weights_are_normalised_similarities():
    atoms = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    x = torch.tensor([[3.0, 4.0]])  # cosines 0.6, 0.8, -0.6
    rows = _combine(atoms, x, k=2, cosine_similarity=True)
    torch.testing.assert_close(rows, torch.tensor([[0.6 / 1.4, 0.8 / 1.4, 0.0]]))


def test_barycentric_weights_sum_to_one_and_least_squares_is_free():
    atoms = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
    bary = _combine(atoms, torch.tensor([[1.0, 1.0]]), k=3, weight_scheme="barycentric")
    torch.testing.assert_close(bary, torch.tensor([[0.0, 0.5, 0.5]]), atol=1e-5, rtol=0)
    free = _combine(atoms[1:], torch.tensor([[2.0, 3.0]]), k=2, weight_scheme="least_squares")
    # (2, 3) = 1.0 * (2, 0) + 1.5 * (0, 2): weights on MODEL ids 0 and 1 (atoms[1:] -> ids 0, 1)
    torch.testing.assert_close(free, torch.tensor([[1.0, 1.5, 0.0]]), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("method", "matrix", "weights"),
    [
        ("mean", "embed", [1 / 3, 1 / 3, 1 / 3]),
        ("sum", "lm_head", [1.0, 1.0, 1.0]),
        ("weighted_mean", "embed", [1 / 6, 2 / 6, 3 / 6]),
        ("weighted_mean", "lm_head", [3 / 6, 2 / 6, 1 / 6]),
        ("first_last", "embed", [0.0, 0.0, 1.0]),
        ("first_last", "lm_head", [1.0, 0.0, 0.0]),
    ],
)
def test_subword_piece_weights(method, matrix, weights):
    combo = subword_combination([[0, 1, 2], []], method, matrix, fallback=2)
    rows = combo.apply(MODEL_ROWS)
    torch.testing.assert_close(rows[0], torch.tensor(weights))
    torch.testing.assert_close(rows[1], MODEL_ROWS[2])  # no pieces: the fallback row


@pytest.mark.parametrize("candidates", [0, 64, 400])
def test_omp_recovers_planted_codes_in_any_batching(candidates):
    """Exact search (0, or at least the dictionary size) and a 64-atom prefilter alike: the
    planted atoms (coefficients 0.5-1.5 in size) are among each target's 64 most correlated,
    which the prefilter needs."""
    gen = torch.Generator().manual_seed(0)
    atoms = torch.randn(400, 128, generator=gen)
    idx = torch.stack([torch.randperm(400, generator=gen)[:6] for _ in range(20)])
    sign = torch.randint(0, 2, (20, 6), generator=gen) * 2.0 - 1.0
    coeffs = sign * (0.5 + torch.rand(20, 6, generator=gen))
    x = torch.einsum("bk,bkd->bd", coeffs, atoms[idx])  # (20, 128)
    unit = atoms / atoms.norm(dim=1, keepdim=True)
    top = (x @ unit.T).abs().topk(64, dim=1).indices
    assert all(set(idx[b].tolist()) <= set(top[b].tolist()) for b in range(20))
    for batch in (-1, 3):
        got_idx, got = batched_omp(atoms, x, k=10, batch_size=batch, candidates=candidates)
        assert got_idx.shape == (20, 10)
        for b in range(20):
            planted = dict(zip(idx[b].tolist(), coeffs[b].tolist(), strict=True))
            found = {
                i: c
                for i, c in zip(got_idx[b].tolist(), got[b].tolist(), strict=True)
                if abs(c) > 1e-6
            }
            assert found.keys() == planted.keys()
            for i, c in planted.items():
                assert found[i] == pytest.approx(c, abs=1e-4)


def test_omp_prefilter_searches_only_the_most_correlated_atoms():
    """x = e0 + e1 + 0.9 e2 over unit atoms e0, e1, e2 and u = (e0 + e1) / sqrt 2, whose
    correlations with x are 1, 1, 0.9 and sqrt 2. Exact OMP picks u, then e2, and reproduces
    x; with 3 candidates (u, e0, e1) e2 is out of reach, so the code is the projection of x
    onto span(e0, e1), (1, 1, 0)."""
    s = 2.0**-0.5
    atoms = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [s, s, 0]])
    x = torch.tensor([[1.0, 1.0, 0.9]])
    idx, c = batched_omp(atoms, x, k=3)
    assert idx[0].tolist()[:2] == [3, 2]
    torch.testing.assert_close(torch.einsum("bk,bkd->bd", c, atoms[idx]), x)
    idx, c = batched_omp(atoms, x, k=3, candidates=3)
    assert sorted(idx[0].tolist()) == [0, 1, 3]
    torch.testing.assert_close(
        torch.einsum("bk,bkd->bd", c, atoms[idx]), torch.tensor([[1.0, 1.0, 0.0]])
    )
    # Fewer candidates than k: raised to k (here 3 again), never fewer atoms than asked.
    assert sorted(batched_omp(atoms, x, k=3, candidates=1)[0][0].tolist()) == [0, 1, 3]


def test_omp_in_float64_stays_float64():
    atoms = torch.eye(4, dtype=torch.float64)
    idx, c = batched_omp(atoms, torch.tensor([[0.0, 2.0, 0.0, -1.0]], dtype=torch.float64), 2)
    assert c.dtype == torch.float64 and sorted(idx[0].tolist()) == [1, 3]
    assert sorted(c[0].tolist()) == [-1.0, 2.0]


def test_john_hewitt_copes_with_a_singular_covariance_and_is_seeded():
    rows = torch.tensor([[1.0, 2.0, 3.0, 4.0], [2.0, 3.0, 4.0, 5.0]])  # rank-1 covariance
    a = statistical_rows("john_hewitt", rows, 5, torch.Generator().manual_seed(1))
    b = statistical_rows("john_hewitt", rows, 5, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.isfinite(a).all()
    many = statistical_rows("john_hewitt", rows, 4000, torch.Generator().manual_seed(2))
    torch.testing.assert_close(many.mean(dim=0), rows.mean(dim=0), atol=0.05, rtol=0)
    assert statistical_rows("zero", rows, 2, torch.Generator()).abs().sum() == 0
    torch.testing.assert_close(
        statistical_rows("mean", rows, 1, torch.Generator())[0], rows.mean(0)
    )
