"""WUDI: the closed form zeroes the gradient, agrees with the iterative form, keeps the
start's null-space part, and both factorisations agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meldkit.methods.wudi import wudi_closed_form, wudi_gradient, wudi_weights
from tests.methods.helpers import run_method


def _family(shape: tuple[int, int], n: int, seed: int, scales: list[float]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g, dtype=torch.float64)
    return [base] + [
        base + s * torch.randn(shape, generator=g, dtype=torch.float64) for s in scales[:n]
    ]


def _numpy_gradient(tau_m: np.ndarray, taus: list[np.ndarray]) -> np.ndarray:
    # d/dτ_m Σ_t ‖(τ_m − τ_t) τ_tᵀ‖² / ‖τ_t‖² = Σ_t 2 (τ_m − τ_t) τ_tᵀ τ_t / ‖τ_t‖²
    return sum(2 * (tau_m - t) @ t.T @ t / np.sum(t * t) for t in taus)


def test_closed_form_zeroes_the_gradient_with_very_different_norms() -> None:
    # Task vectors whose norms differ 100x (the usual case for public fine-tunes).
    inputs = _family((6, 5), 3, seed=1, scales=[1.0, 0.1, 0.01])
    out = run_method("wudi", inputs, 0, {"solver": "closed"})
    taus = [(x - inputs[0]).numpy() for x in inputs[1:]]
    tau_m = (out - inputs[0]).numpy()
    scale = np.abs(_numpy_gradient(sum(taus), taus)).max()
    assert np.abs(_numpy_gradient(tau_m, taus)).max() < 1e-9 * scale
    # Full rank here (T·out = 18 ≥ in = 5): the minimiser is unique, the solution of
    # τ_m A = B, which numpy gives directly.
    a = sum(t.T @ t / np.sum(t * t) for t in taus)
    b = sum(t @ t.T @ t / np.sum(t * t) for t in taus)
    np.testing.assert_allclose(tau_m, np.linalg.solve(a.T, b.T).T, atol=1e-10)


def test_adam_form_agrees_with_the_closed_form() -> None:
    inputs = _family((6, 4), 2, seed=2, scales=[1.0, 0.5])
    closed = run_method("wudi", inputs, 0, {"solver": "closed"})
    adam = run_method("wudi", inputs, 0, {"solver": "adam", "steps": 3000, "lr": 3e-3})
    torch.testing.assert_close(adam, closed, atol=2e-3, rtol=0)
    # ... and the paper's 300 small steps move from Σ τ_t towards it.
    start = inputs[0] + (inputs[1] - inputs[0]) + (inputs[2] - inputs[0])
    paper = run_method("wudi", inputs, 0, {"solver": "adam", "steps": 300, "lr": 1e-3})
    assert (paper - closed).norm() < (start - closed).norm()


@pytest.mark.parametrize("form", ["gram", "stacked"])
def test_singular_system_keeps_the_start_off_the_range(form: str) -> None:
    # T·out = 2·2 = 4 < in = 7: A has rank 4, so the part of Σ τ_t outside the tasks' row
    # space stays (as gradient descent from Σ τ_t would leave it).
    g = torch.Generator().manual_seed(3)
    taus = [torch.randn(2, 7, generator=g, dtype=torch.float64) for _ in range(2)]
    tau_m = wudi_closed_form(taus, 1e-12, form)
    weights = wudi_weights(taus)
    grad = wudi_gradient(tau_m, taus, weights)
    assert grad.abs().max() < 1e-10
    rows = torch.cat(taus)  # (4, 7), spans range(A)
    q, _ = torch.linalg.qr(rows.T)  # (7, 4) orthonormal basis of the row space
    off = lambda m: m - (m @ q) @ q.T  # noqa: E731
    torch.testing.assert_close(off(tau_m), off(taus[0] + taus[1]), atol=1e-12, rtol=0)


def test_both_factorisations_agree() -> None:
    g = torch.Generator().manual_seed(4)
    for shape in [(5, 3), (3, 8)]:
        taus = [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3)]
        torch.testing.assert_close(
            wudi_closed_form(taus, 1e-12, "gram"), wudi_closed_form(taus, 1e-12, "stacked")
        )


def test_wudi_non_matrix_rule_and_lambda() -> None:
    b = torch.tensor([1.0, 2.0])
    xs = [b + torch.tensor([0.5, 0.0]), b + torch.tensor([0.0, -1.0])]
    out = run_method("wudi", [b, *xs], 0, {"lambda": 2.0})  # b + 2 · [0.25, -0.5]
    assert torch.equal(out, run_method("wudi", [b, *xs], 0, {"lambda": 2.0, "solver": "closed"}))
    torch.testing.assert_close(out, torch.tensor([1.5, 1.0]))


def test_wudi_refuses_an_unknown_solver() -> None:
    from meldkit.methods import get_method

    check = get_method("wudi").check
    assert check is not None
    assert check({"solver": "lbfgs"}, [{}, {}], 0) == [
        "wudi: solver is 'lbfgs'; choose one of adam, closed"
    ]


def test_in_place_adam_is_torch_adam_with_the_exact_gradient() -> None:
    # The solver writes Adam out (one addmm per step, no allocation); torch.optim.Adam on the
    # same exact gradient 2(τ_m A − B) from the same start is the reference.
    from meldkit.methods.wudi import wudi_adam

    g = torch.Generator().manual_seed(5)
    taus = [s * torch.randn(7, 5, generator=g, dtype=torch.float64) for s in (1.0, 0.3, 2.0)]
    weights = wudi_weights(taus)
    param = torch.nn.Parameter(sum(taus[1:], taus[0].clone()))
    optimiser = torch.optim.Adam([param], lr=1e-3)
    for _ in range(40):
        param.grad = wudi_gradient(param.detach(), taus, weights)
        optimiser.step()
    got = wudi_adam(taus, 40, 1e-3)
    torch.testing.assert_close(got, param.detach(), atol=1e-12, rtol=0)
    assert (got - sum(taus)).abs().max() > 1e-3  # it moved: 40 steps of up to lr each
