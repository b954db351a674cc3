"""Iso-C and Iso-CTS: flat spectra, the mean singular value, golden values from numpy."""

from __future__ import annotations

import numpy as np
import torch

from meldkit.methods.iso_cts import subspace_sizes
from tests.methods.helpers import run_method


def _family(shape: tuple[int, int], n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g, dtype=torch.float64)
    return [base] + [
        base + 0.1 * torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(n)
    ]


def _polar(m: np.ndarray) -> np.ndarray:
    p, _, q = np.linalg.svd(m, full_matrices=False)
    return p @ q


def test_iso_c_spectrum_is_flat_at_the_mean_of_the_summed_task_vector() -> None:
    inputs = _family((10, 7), 3, seed=1)
    out = run_method("iso_c", inputs, 0, {"alpha": 1.5})
    total = sum((x - inputs[0]).numpy() for x in inputs[1:])
    s_total = np.linalg.svd(total, compute_uv=False)
    got = np.linalg.svd((out - inputs[0]).numpy(), compute_uv=False)
    np.testing.assert_allclose(got, np.full(7, 1.5 * s_total.mean()), rtol=1e-10)
    u, s, vh = np.linalg.svd(total, full_matrices=False)
    np.testing.assert_allclose(
        out.numpy(), inputs[0].numpy() + 1.5 * s.mean() * (u @ vh), atol=1e-12
    )


def test_iso_c_weights_and_non_matrix_rule() -> None:
    b = torch.tensor([1.0, -1.0])
    xs = [b + torch.tensor([0.2, 0.4]), b + torch.tensor([0.6, 0.0])]
    # 1-D: b + alpha * mean(w_t τ_t) = b + 1 * ([0.2, 0.4] * 2 + [0.6, 0]) / 2 = b + [0.5, 0.4]
    out = run_method("iso_c", [b, *xs], 0, per_input=[{}, {"weight": 2.0}, {}])
    torch.testing.assert_close(out, b + torch.tensor([0.5, 0.4]))


def test_subspace_sizes_use_the_whole_rank() -> None:
    # r = 128, T = 4: ⌊0.8·128⌋ = 102, s = round(26 / 4) = round(6.5) = 6 (banker's), k = 104
    assert subspace_sizes(128, 4, 0.8) == (104, 6)
    # r = 10, T = 3: ⌊8⌋ = 8, s = round(2/3) = 1, k = 7
    assert subspace_sizes(10, 3, 0.8) == (7, 1)
    assert subspace_sizes(4, 4, 0.8) == (4, 0)  # s = round(1/4) = 0: Iso-C
    assert subspace_sizes(6, 2, 0.0) == (0, 3)


def test_iso_cts_matches_the_formula() -> None:
    inputs = _family((12, 10), 3, seed=2)  # r = 10, T = 3: k = 7, s = 1
    out = run_method("iso_cts", inputs, 0, {"alpha": 0.5})
    taus = [(x - inputs[0]).numpy() for x in inputs[1:]]
    u, s, vh = np.linalg.svd(sum(taus), full_matrices=False)
    us, ss, vs = [u[:, :7]], [s[:7]], [vh[:7].T]
    for tau in taus:
        residual = tau - u[:, :7] @ u[:, :7].T @ tau
        ut, st, vht = np.linalg.svd(residual, full_matrices=False)
        us.append(ut[:, :1])
        ss.append(st[:1])
        vs.append(vht[:1].T)
    flat = np.concatenate(ss).mean()
    want = (
        inputs[0].numpy()
        + 0.5 * flat * _polar(np.concatenate(us, 1)) @ _polar(np.concatenate(vs, 1)).T
    )
    np.testing.assert_allclose(out.numpy(), want, atol=1e-12)
    # The spectrum is flat: every one of the r = 10 directions gets 0.5 · σ̄.
    got = np.linalg.svd((out - inputs[0]).numpy(), compute_uv=False)
    np.testing.assert_allclose(got, np.full(10, 0.5 * flat), rtol=1e-9)


def test_iso_cts_without_task_directions_is_iso_c() -> None:
    inputs = _family((8, 6), 2, seed=3)
    a = run_method("iso_cts", inputs, 0, {"common_fraction": 1.0})
    torch.testing.assert_close(a, run_method("iso_c", inputs, 0))
