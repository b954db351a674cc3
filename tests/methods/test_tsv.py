"""TSV-M: golden values from numpy, the orthogonality of its factors and its rank."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meldkit.methods import spectral
from tests.methods.helpers import run_method


def _family(shape: tuple[int, int], n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g, dtype=torch.float64)
    return [base] + [
        base + 0.1 * torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(n)
    ]


def _numpy_tsv(taus: list[np.ndarray], k: int) -> np.ndarray:
    """TSV-M written out with numpy: per-task top-k SVD, concatenate, polar factor P Qᵀ."""
    us, ss, vs = [], [], []
    for tau in taus:
        u, s, vh = np.linalg.svd(tau, full_matrices=False)
        us.append(u[:, :k])
        ss.append(s[:k])
        vs.append(vh[:k].T)
    u, s, v = np.concatenate(us, 1), np.concatenate(ss), np.concatenate(vs, 1)
    pu, _, qu = np.linalg.svd(u, full_matrices=False)
    pv, _, qv = np.linalg.svd(v, full_matrices=False)
    return (pu @ qu) @ np.diag(s) @ (pv @ qv).T


def test_tsv_matches_the_formula_and_has_rank_tk() -> None:
    inputs = _family((12, 9), 3, seed=1)  # r = 9, T = 3 -> k = 3, rank T·k = 9
    out = run_method("tsv", inputs, 0, {"alpha": 0.7})
    taus = [(x - inputs[0]).numpy() for x in inputs[1:]]
    want = inputs[0].numpy() + 0.7 * _numpy_tsv(taus, 3)
    np.testing.assert_allclose(out.numpy(), want, atol=1e-10)


def test_tsv_factors_are_orthogonal() -> None:
    # With orthonormal U⊥ and V⊥, Δ = U⊥ S V⊥ᵀ is an SVD: its singular values are exactly the
    # T·k kept ones and the rest are zero, which no correlated U or V would give.
    inputs = _family((16, 10), 2, seed=2)  # r = 10, T = 2, rank_fraction 0.2 -> k = 2
    out = run_method("tsv", inputs, 0, {"rank_fraction": 0.2})
    delta = (out - inputs[0]).numpy()
    kept = np.concatenate(
        [np.linalg.svd((x - inputs[0]).numpy(), compute_uv=False)[:2] for x in inputs[1:]]
    )
    got = np.linalg.svd(delta, compute_uv=False)
    np.testing.assert_allclose(got[:4], np.sort(kept)[::-1], rtol=1e-9)
    assert np.all(got[4:] < 1e-12)
    assert np.linalg.matrix_rank(delta, tol=1e-9) == 4


def test_tsv_non_matrix_and_embedding_rules() -> None:
    b = torch.tensor([1.0, 2.0, 3.0])
    xs = [b + torch.tensor([0.3, 0.0, -0.6]), b + torch.tensor([0.1, 0.6, 0.0])]
    # 1-D: b + alpha * mean τ = b + 2 * [0.2, 0.3, -0.3]
    out = run_method("tsv", [b, *xs], 0, {"alpha": 2.0})
    torch.testing.assert_close(out, b + torch.tensor([0.4, 0.6, -0.6]))
    inputs = [x.float() for x in _family((6, 4), 2, seed=3)]
    mean = (inputs[1] + inputs[2]) / 2
    got = run_method("tsv", inputs, 0, {"embeddings": "mean"}, tensor_name="lm_head.weight")
    torch.testing.assert_close(got, mean)
    matrix = run_method("tsv", inputs, 0, tensor_name="lm_head.weight")
    assert not torch.allclose(matrix, mean, atol=1e-4)


def test_tsv_weight_scales_a_task() -> None:
    inputs = _family((5, 4), 2, seed=4)
    doubled = [inputs[0], inputs[0] + 2 * (inputs[1] - inputs[0]), inputs[2]]
    a = run_method("tsv", inputs, 0, per_input=[{}, {"weight": 2.0}, {}])
    torch.testing.assert_close(a, run_method("tsv", doubled, 0))


def test_tsv_refuses_an_unknown_embedding_rule() -> None:
    from meldkit.methods import get_method

    check = get_method("tsv").check
    assert check is not None
    assert check({"embeddings": "svd"}, [{}, {}], 0) == [
        "tsv: embeddings is 'svd'; choose one of matrix, mean"
    ]


@pytest.mark.parametrize("shape", [(300, 280), (280, 300)])
def test_randomized_top_svd_matches_the_exact_one(shape: tuple[int, int]) -> None:
    # k = 20 of r = 280 takes the randomized path; a decaying spectrum makes the top-k
    # subspace well separated, as in real task vectors.
    g = torch.Generator().manual_seed(5)
    u, _ = torch.linalg.qr(torch.randn(shape[0], shape[0], generator=g))
    v, _ = torch.linalg.qr(torch.randn(shape[1], shape[1], generator=g))
    r = min(shape)
    s = 0.9 ** torch.arange(r, dtype=torch.float32)
    m = (u[:, :r] * s) @ v[:, :r].T
    from meldkit.methods.registry import MergeContext

    uk, sk, vhk = spectral.top_svd(m, 20, MergeContext("w"), "t")
    torch.testing.assert_close(sk, s[:20], rtol=1e-4, atol=1e-6)
    exact = (u[:, :20] * s[:20]) @ v[:, :20].T
    torch.testing.assert_close((uk * sk) @ vhk, exact, atol=1e-5, rtol=0)
