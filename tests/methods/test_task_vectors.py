"""Golden values for the task-vector family: weighting, sign election, normalize, lambda."""

from __future__ import annotations

import torch

from tests.methods.helpers import run_method, t


def close(actual: torch.Tensor, expected: list[float], tol: float = 1e-6) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected), atol=tol, rtol=tol)


# b = [1,2,3]; δ1 = [1,0,-2], δ2 = [-1,2,0]; w = 0.5, 1
TA = [t(1, 2, 3), t(2, 2, 1), t(0, 4, 3)]
TA_W = [{}, {"weight": 0.5}, {"weight": 1.0}]


def test_task_arithmetic_sum() -> None:
    # Σ w δ = [0.5-1, 0+2, -1+0] = [-0.5, 2, -1] -> b + that = [0.5, 4, 2]
    close(run_method("task_arithmetic", TA, 0, per_input=TA_W), [0.5, 4.0, 2.0])


def test_task_arithmetic_normalize() -> None:
    # divisor Σw = 1.5 -> [-1/3, 4/3, -2/3] -> [0.6666667, 3.3333333, 2.3333333]
    out = run_method("task_arithmetic", TA, 0, {"normalize": True}, TA_W)
    close(out, [2 / 3, 10 / 3, 7 / 3])


def test_normalize_then_lambda() -> None:
    # mixed / 1.5 * 2 = [-2/3, 8/3, -4/3] -> b + that = [1/3, 14/3, 5/3]
    out = run_method("task_arithmetic", TA, 0, {"normalize": True, "lambda": 2.0}, TA_W)
    close(out, [1 / 3, 14 / 3, 5 / 3])


def test_lambda_without_normalize() -> None:
    # [-0.5, 2, -1] * 0.5 = [-0.25, 1, -0.5] -> [0.75, 3, 2.5]
    out = run_method("task_arithmetic", TA, 0, {"lambda": 0.5}, TA_W)
    close(out, [0.75, 3.0, 2.5])


def test_zero_weight_sum_divisor_becomes_one() -> None:
    # w = 1, -1: |Σw| < 1e-8 -> divisor 1 -> δ1 - δ2 = [2, -2, -2] -> [3, 0, 1]
    out = run_method(
        "task_arithmetic", TA, 0, {"normalize": True}, [{}, {"weight": 1}, {"weight": -1}]
    )
    close(out, [3.0, 0.0, 1.0])


def test_only_base_returns_base() -> None:
    b = t(1, 2, 3)
    for name in ("task_arithmetic", "ties", "dare_ties", "della", "breadcrumbs"):
        assert torch.equal(run_method(name, [b], 0), b)


def test_base_position_anywhere() -> None:
    # same as test_task_arithmetic_sum with the base last
    out = run_method("task_arithmetic", [TA[1], TA[2], TA[0]], 2, per_input=[TA_W[1], TA_W[2], {}])
    close(out, [0.5, 4.0, 2.0])


# TIES sign election, density 1 (no sparsification), b = 0, w = 1, 0.5:
#   δ1 = [3, -1, 2,  0.5, 0,  2,  1  ]   v1 = δ1
#   δ2 = [-2, -2, 1, -4,  1, -4, -1.5]   v2 = 0.5 δ2 = [-1, -1, 0.5, -2, 0.5, -2, -0.75]
#   Σv = [2, -2, 2.5, -1.5, 0.5, 0, 0.25] -> s = [+, -, +, -, +, + (exact 0), +]
#   m1 = [1, 1, 1, 0, 0 (δ=0), 1, 1];  m2 = [0, 1, 1, 1, 1, 0, 0]
#   mixed   = [3, -2, 2.5, -2, 0.5, 2, 1]
#   divisor = [1, 1.5, 1.5, 0.5, 0.5, 1, 1]   (the zero δ1 in column 4 is not counted)
#   out     = [3, -4/3, 5/3, -4, 1, 2, 1]
# Column 6 shows the election is weighted: the unweighted sum 1 - 1.5 < 0 would elect -.
TIES_IN = [torch.zeros(7), t(3, -1, 2, 0.5, 0, 2, 1), t(-2, -2, 1, -4, 1, -4, -1.5)]
TIES_W = [{}, {"weight": 1.0}, {"weight": 0.5}]


def test_ties_sign_election() -> None:
    out = run_method("ties", TIES_IN, 0, per_input=TIES_W)
    close(out, [3.0, -4 / 3, 5 / 3, -4.0, 1.0, 2.0, 1.0])


def test_ties_without_normalize() -> None:
    out = run_method("ties", TIES_IN, 0, {"normalize": False}, TIES_W)
    close(out, [3.0, -2.0, 2.5, -2.0, 0.5, 2.0, 1.0])


def test_ties_lambda_after_normalize() -> None:
    out = run_method("ties", TIES_IN, 0, {"lambda": 3.0}, TIES_W)
    close(out, [9.0, -4.0, 5.0, -12.0, 3.0, 6.0, 3.0])


def test_ties_with_magnitude_sparsification() -> None:
    # δ1 = [0.1, -3, 2, 0.2] density 0.5 -> k=2 -> [0, -3, 2, 0]
    # δ2 = [1, 2, -0.5, -3]  density 0.5 -> k=2 -> [0, 2, 0, -3]
    # Σ = [0, -1, 2, -3] -> s = [+, -, +, -]; m1 = [0, 1, 1, 0], m2 = [0, 0, 0, 1]
    # mixed = [0, -3, 2, -3], divisor = [0 -> 1, 1, 1, 1] -> b + [0, -3, 2, -3]
    b = t(1, 1, 1, 1)
    inputs = [b, b + t(0.1, -3, 2, 0.2), b + t(1, 2, -0.5, -3)]
    out = run_method("ties", inputs, 0, per_input={"weight": 1.0, "density": 0.5})
    close(out, [1.0, -2.0, 3.0, -2.0])


def test_breadcrumbs_ties_pipeline() -> None:
    # δ1 = [0.1, 0.2, 0.3, 0.4, 5], density 0.6, gamma 0.2 -> target 3, n_top 1, n_bot 1:
    #   ranks [1, 4) = 0.2, 0.3, 0.4 -> [0, 0.2, 0.3, 0.4, 0]
    # δ2 = [-0.4, -0.1, 0.2, 0.3, -6], same window -> |.| ranks: 0.1 r0, 0.2 r1, 0.3 r2,
    #   0.4 r3, 6 r4 -> keep r1..r3 -> [-0.4, 0, 0.2, 0.3, 0]
    # Σ = [-0.4, 0.2, 0.5, 0.7, 0] -> s = [-, +, +, +, +]
    # m1 = [0 (zero), 1, 1, 1, 0]; m2 = [1, 0 (zero), 1, 1, 0]
    # mixed = [-0.4, 0.2, 0.5, 0.7, 0] (normalize off by default)
    inputs = [torch.zeros(5), t(0.1, 0.2, 0.3, 0.4, 5), t(-0.4, -0.1, 0.2, 0.3, -6)]
    per = {"weight": 1.0, "density": 0.6, "gamma": 0.2}
    close(run_method("breadcrumbs_ties", inputs, 0, per_input=per), [-0.4, 0.2, 0.5, 0.7, 0.0])
    # breadcrumbs (no election): same sparsified deltas, summed
    close(run_method("breadcrumbs", inputs, 0, per_input=per), [-0.4, 0.2, 0.5, 0.7, 0.0])


def test_negative_weight_flips_sign() -> None:
    # task arithmetic with w = -1: b - δ
    out = run_method("task_arithmetic", [t(1, 1), t(2, 0)], 0, per_input=[{}, {"weight": -1.0}])
    close(out, [0.0, 2.0])


def test_dare_density_one_is_task_arithmetic() -> None:
    out = run_method("dare_linear", TA, 0, per_input=TA_W)
    close(out, [0.5, 4.0, 2.0])


def test_all_zero_deltas_give_base() -> None:
    b = t(0.5, -1, 2)
    for name in ("ties", "dare_ties", "della", "breadcrumbs_ties", "dare_linear"):
        per = {"weight": 1.0, "density": 0.5, "epsilon": 0.1}
        out = run_method(name, [b, b.clone(), b.clone()], 0, per_input=per)
        assert torch.equal(out, b), name


def test_inputs_are_not_modified() -> None:
    inputs = [torch.randn(6, 5, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    copies = [x.clone() for x in inputs]
    per = {"weight": 0.7, "density": 0.5, "epsilon": 0.1, "gamma": 0.1}
    for name in (
        "task_arithmetic",
        "ties",
        "dare_ties",
        "dare_linear",
        "breadcrumbs",
        "breadcrumbs_ties",
        "della",
        "della_linear",
    ):
        run_method(name, inputs, 1, per_input=per)
        for x, c in zip(inputs, copies, strict=True):
            assert torch.equal(x, c), name
