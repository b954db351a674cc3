"""Golden values for sce, ram, ramplus_tl, model_stock, nearswap and arcee_fusion."""

from __future__ import annotations

import math

import torch

from meldkit.methods.arcee_fusion import importance
from tests.methods.helpers import run_method, t


def close(
    actual: torch.Tensor, expected: list[float] | list[list[float]], tol: float = 1e-6
) -> None:
    torch.testing.assert_close(
        actual, torch.tensor(expected, dtype=actual.dtype), atol=tol, rtol=tol
    )


# --- sce --------------------------------------------------------------------------------------
# b = 0; δ1 = [1, -2, 3, 0], δ2 = [3, 1, -1, 0]
SCE = [torch.zeros(4), t(1, -2, 3, 0), t(3, 1, -1, 0)]


def test_sce_weights_and_election() -> None:
    # Σ = [4, -1, 2, 0] -> s = [+, -, +, +]; m1 = [1, 1, 1, 0], m2 = [1, 0, 0, 0]
    # ω: mean δ1² = 14/4 = 3.5, mean δ2² = 11/4 = 2.75, total 6.25 -> ω = [0.56, 0.44]
    # col 0: (0.56*1 + 0.44*3)/(0.56+0.44) = 1.88; col 1: -2; col 2: 3; col 3: 0/1e-6 = 0
    close(run_method("sce", SCE, 0), [1.88, -2.0, 3.0, 0.0])


def test_sce_topk_by_variance() -> None:
    # population variances: col0 (1,3) -> 1; col1 (-2,1) -> 2.25; col2 (3,-1) -> 4; col3 -> 0
    # nonzero = 3, k = floor(3*0.5) = 1 -> only col 2 survives: δ1' = 3, δ2' = -1 there
    # s = +, m1 = 1, m2 = 0; ω = [9/4, 1/4]/2.5 = [0.9, 0.1] -> 0.9*3/0.9 = 3; b = 1
    inputs = [x + 1 for x in SCE]
    close(run_method("sce", inputs, 0, {"select_topk": 0.5}), [1.0, 1.0, 4.0, 1.0])


def test_sce_uniform_weights_for_tiny_energy() -> None:
    # δ1 = [1e-4, 2e-4], δ2 = [3e-4, -2e-4]: Σ mean δ² = 2.5e-8 + 6.5e-8 < 1e-6 -> ω = [0.5, 0.5]
    # Σ = [4e-4, 0] -> s = [+, +]; m1 = [1, 1], m2 = [1, 0]
    # col0 (0.5e-4 + 1.5e-4)/1 = 2e-4; col1 0.5*2e-4/0.5 = 2e-4 (energy weights would give
    # 2.44e-4 in col 0)
    inputs = [
        torch.zeros(2, dtype=torch.float64),
        t(1e-4, 2e-4, dtype=torch.float64),
        t(3e-4, -2e-4, dtype=torch.float64),
    ]
    close(run_method("sce", inputs, 0), [2e-4, 2e-4], tol=1e-12)


# --- ram --------------------------------------------------------------------------------------
# b = 0, epsilon 0.1; active: δ1 = [1, 0.05, 2, 0, -1] -> [1,0,1,0,1]
#                             δ2 = [0, 0, 4, 0.5, -3] -> [0,0,1,1,1]
#                             δ3 = [0, 0.2, 0, 0, 2]  -> [0,1,0,0,1]
# c = [1, 1, 2, 1, 3]
RAM = [torch.zeros(5), t(1, 0.05, 2, 0, -1), t(0, 0, 4, 0.5, -3), t(0, 0.2, 0, 0, 2)]


def test_ram_unique_and_shared() -> None:
    # col0 unique 1; col1 0.05 dropped, unique 0.2; col2 (2+4)/2 = 3; col3 unique 0.5;
    # col4 (-1-3+2)/3 = -2/3
    close(run_method("ram", RAM, 0, {"epsilon": 0.1}), [1.0, 0.2, 3.0, 0.5, -2 / 3])


def test_ramplus_tl_boosts_unique_parts() -> None:
    # r = 0.5, alpha = 1.5
    # model 1: unique {0} -> 1, shared {2, 4} -> 2; rho = 2 -> clamp 1.5 -> λ = 1.75
    # model 2: unique {3} -> 1, shared {2, 4} -> 2; λ = 1.75
    # model 3: unique {1} -> 1, shared {4} -> 1; rho = 1 -> λ = 1.5
    # -> [1.75*1, 1.5*0.2, 3, 1.75*0.5, -2/3]
    out = run_method("ramplus_tl", RAM, 0, {"epsilon": 0.1, "r": 0.5, "alpha": 1.5})
    close(out, [1.75, 0.3, 3.0, 0.875, -2 / 3])


def test_ramplus_tl_no_unique_entries() -> None:
    # both models active only where the other is: rho = 1/max(0, eps) is huge -> clamp alpha;
    # nothing is unique, so the output is the shared mean (2+4)/2 = 3 regardless
    out = run_method("ramplus_tl", [t(0.0), t(2.0), t(4.0)], 0)
    close(out, [3.0])


# --- model_stock ------------------------------------------------------------------------------


def test_model_stock_two_models() -> None:
    # δ = [1,0], [1,1]: cos = 1/sqrt2; N = 2: t = 2c/(1+c) = 0.82842712
    # mean x = [2, 1.5]; out = t*[2,1.5] + (1-t)*[1,1] = [1.82842712, 1.41421356]
    b = t(1, 1)
    close(run_method("model_stock", [b, t(2, 1), t(2, 2)], 0), [1.82842712, 1.41421356])


def test_model_stock_three_models() -> None:
    # δ = e1, e2, e1+e2: cosines 0, 1/sqrt2, 1/sqrt2 -> mean 0.47140452
    # t = 3c/(1+2c) = 1.41421356/1.94280904 = 0.72792206; mean x = [2/3, 2/3, 0]; b = 0
    inputs = [torch.zeros(3), t(1, 0, 0), t(0, 1, 0), t(1, 1, 0)]
    close(run_method("model_stock", inputs, 0), [0.48528137, 0.48528137, 0.0])


def test_model_stock_singular_guard() -> None:
    # δ = [1,0] and [-2,0]: cos = -1, 1 + (N-1)cos = 0 -> t = 0 -> the base
    b = t(0.5, 0.5)
    out = run_method("model_stock", [b, b + t(1, 0), b + t(-2, 0)], 0)
    close(out, [0.5, 0.5])


def test_model_stock_filter_wise() -> None:
    # base rows [0,0], [1,1]; δ1 rows [1,0], [1,0]; δ2 rows [1,1], [-1,0]
    # row 0: cos = 1/sqrt2 -> t = 0.82842712, mean row [1, 0.5] -> [0.82842712, 0.41421356]
    # row 1: cos = -1 -> singular -> t = 0 -> base row [1, 1]
    b = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    x1 = b + torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    x2 = b + torch.tensor([[1.0, 1.0], [-1.0, 0.0]])
    out = run_method("model_stock", [b, x1, x2], 0, {"filter_wise": True})
    close(out, [[0.82842712, 0.41421356], [1.0, 1.0]])
    # whole tensor: δ1·δ2 = 1 + 0 - 1 + 0 = 0 -> cos 0 -> t 0 -> base
    close(run_method("model_stock", [b, x1, x2], 0), [[0.0, 0.0], [1.0, 1.0]])


def test_model_stock_identical_offsets_zero() -> None:
    # zero offsets: norm product clamped to 1e-6, cos = 0, t = 0 -> base (no NaN)
    b = t(1, 2, 3)
    assert torch.equal(run_method("model_stock", [b, b.clone(), b.clone()], 0), b)


# --- nearswap ---------------------------------------------------------------------------------


def test_nearswap() -> None:
    # t = 0.1; distances 0.05, 0.2, 1, 0 -> ω = clamp(0.1/d): 1, 0.5, 0.1, 1 (d -> 1e-6)
    # out = ω x + (1-ω) b = [0.05, 0.1, -0.1, 1]
    b = t(0, 0, 0, 1)
    x = t(0.05, 0.2, -1.0, 1.0)
    close(run_method("nearswap", [b, x], 0, {"t": 0.1}), [0.05, 0.1, -0.1, 1.0])


def test_nearswap_base_position() -> None:
    b = t(0, 0, 0, 1)
    x = t(0.05, 0.2, -1.0, 1.0)
    close(run_method("nearswap", [x, b], 1, {"t": 0.1}), [0.05, 0.1, -0.1, 1.0])


# --- arcee_fusion -----------------------------------------------------------------------------


def _kl(p: list[float], q: list[float]) -> float:
    p = [v + 1e-8 for v in p]
    q = [v + 1e-8 for v in q]
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def test_arcee_importance_is_row_wise() -> None:
    # row 0: b = 0, x = [0,0,0,2]: p = [1,1,1,e²]/(3+e²), q = 1/4 each; imp = |x-b| * KL
    # row 1: x = b + 1 everywhere: softmax unchanged -> KL = 0 -> imp 0 despite |x-b| = 1
    e2 = math.exp(2)
    p = [1 / (3 + e2)] * 3 + [e2 / (3 + e2)]
    kl = _kl(p, [0.25] * 4)
    b = torch.zeros(2, 4)
    x = torch.tensor([[0.0, 0.0, 0.0, 2.0], [1.0, 1.0, 1.0, 1.0]])
    close(importance(x, b), [[0, 0, 0, 2 * kl], [0, 0, 0, 0]], tol=1e-6)


def test_arcee_fusion_threshold() -> None:
    # 1-D is one row: imp = K*|x - b| with K > 0, so the cut only depends on |x - b| =
    # 0.1 .. 0.7, 5. Linear-interpolated quartiles of the 8 values:
    #   Q1 at 1.75 -> 0.275; median at 3.5 -> 0.45; Q3 at 5.25 -> 0.625
    # thr = 0.45 + 1.5*0.35 = 0.975 (times K): only the 5 survives
    b = torch.zeros(8)
    x = t(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 5.0)
    close(run_method("arcee_fusion", [b, x], 0), [0, 0, 0, 0, 0, 0, 0, 5.0])


def test_arcee_fusion_keeps_working_dtype() -> None:
    b = torch.zeros(8, dtype=torch.float64)
    x = t(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 5.0, dtype=torch.float64)
    assert run_method("arcee_fusion", [b, x], 0).dtype == torch.float64


def test_single_input_passthrough() -> None:
    # The planner's passthrough_single policy hands a lone tensor through.
    x = t(1, 2, 3)
    for name, shared in [("slerp", {"t": 0.3}), ("arcee_fusion", {}), ("nearswap", {"t": 0.1})]:
        assert torch.equal(run_method(name, [x], 0, shared), x)
    assert torch.equal(run_method("nuslerp", [x], None, per_input={"weight": 1.0}), x)
