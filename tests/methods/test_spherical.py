"""Golden values for slerp, nuslerp, multislerp and karcher, derived by hand from the formulas."""

from __future__ import annotations

import math

import pytest
import torch

from tests.methods.helpers import run_method, t

R2 = math.sqrt(0.5)  # sin(pi/4) = cos(pi/4) = 0.70710678


def close(
    actual: torch.Tensor, expected: list[float] | list[list[float]], tol: float = 1e-6
) -> None:
    torch.testing.assert_close(
        actual, torch.tensor(expected, dtype=actual.dtype), atol=tol, rtol=tol
    )


# --- slerp ------------------------------------------------------------------------------------


def test_slerp_orthogonal_midpoint() -> None:
    # d = 0 -> theta = pi/2, sin theta = 1; s0 = s1 = sin(pi/4) = 0.70710678
    close(run_method("slerp", [t(1, 0), t(0, 1)], 0, {"t": 0.5}), [R2, R2])


def test_slerp_uses_unnormalised_tensors() -> None:
    # Same angle as above; coefficients multiply a=[2,0], b=[0,3]: [2*0.7071, 3*0.7071]
    close(run_method("slerp", [t(2, 0), t(0, 3)], 0, {"t": 0.5}), [2 * R2, 3 * R2])


def test_slerp_one_third() -> None:
    # theta = pi/2: s0 = sin(2/3 * pi/2) = sin(pi/3) = 0.8660254, s1 = sin(pi/6) = 0.5
    close(run_method("slerp", [t(1, 0), t(0, 1)], 0, {"t": 1 / 3}), [0.8660254, 0.5])


def test_slerp_base_position_is_respected() -> None:
    # base is inputs[1] = [1, 0]: t = 1/3 moves a third of the way toward [0, 1]
    close(run_method("slerp", [t(0, 1), t(1, 0)], 1, {"t": 1 / 3}), [0.8660254, 0.5])


def test_slerp_colinear_falls_back_to_lerp() -> None:
    # d = 1 > 0.9995 -> 0.75*[1,2] + 0.25*[2,4] = [1.25, 2.5]
    close(run_method("slerp", [t(1, 2), t(2, 4)], 0, {"t": 0.25}), [1.25, 2.5])


def test_slerp_antipodal_falls_back_to_lerp() -> None:
    # d = -1, |d| > 0.9995 -> 0.5*[1,2] + 0.5*[-3,-6] = [-1, -2]
    close(run_method("slerp", [t(1, 2), t(-3, -6)], 0, {"t": 0.5}), [-1.0, -2.0])


def test_slerp_threshold_0_9995() -> None:
    # b=[1,0.03]: d = 1/sqrt(1.0009) = 0.99955030 > 0.9995 -> lerp: [1, 0.015]
    close(run_method("slerp", [t(1, 0), t(1, 0.03)], 0, {"t": 0.5}), [1.0, 0.015])
    # b=[1,0.04]: d = 1/sqrt(1.0016) = 0.99920096 <= 0.9995 -> slerp, theta = atan(0.04);
    # at t=0.5 both coefficients are sin(theta/2)/sin(theta) = 1/(2 cos(theta/2)) = 0.50009990
    # -> 0.5000999*([1,0] + [1,0.04]) = [1.0001998, 0.02000400]
    close(run_method("slerp", [t(1, 0), t(1, 0.04)], 0, {"t": 0.5}), [1.0001998, 0.0200040])


def test_slerp_zero_norm_base() -> None:
    # ||a|| = 0 <= 1e-8 -> taken as 1; d = 0 -> theta = pi/2 -> 0*a + sin(pi/4)*[3,4]
    close(run_method("slerp", [t(0, 0), t(3, 4)], 0, {"t": 0.5}), [3 * R2, 4 * R2])


def test_slerp_t0_gives_base_exactly() -> None:
    base = t(1, 2, 3)
    out = run_method("slerp", [base, t(-1, 5, 0.5)], 0, {"t": 0.0})
    assert torch.equal(out, base)  # s0 = sin(theta)/sin(theta) = 1, s1 = sin(0) = 0


def test_slerp_t1_gives_other() -> None:
    close(run_method("slerp", [t(1, 2, 3), t(-1, 5, 0.5)], 0, {"t": 1.0}), [-1, 5, 0.5])


def test_slerp_float64_stays_float64() -> None:
    out = run_method(
        "slerp", [t(1, 0, dtype=torch.float64), t(0, 1, dtype=torch.float64)], 0, {"t": 0.5}
    )
    assert out.dtype == torch.float64


# --- nuslerp ----------------------------------------------------------------------------------


def test_nuslerp_t_from_weights() -> None:
    # t = w2/(w1+w2) = 3/4; theta = pi/2: [sin(pi/8), sin(3pi/8)] = [0.38268343, 0.92387953]
    out = run_method("nuslerp", [t(1, 0), t(0, 1)], None, per_input=[{"weight": 1}, {"weight": 3}])
    close(out, [0.38268343, 0.92387953])


def test_nuslerp_zero_weight_sum_uses_half() -> None:
    # |1 + (-1)| < 1e-6 -> t = 0.5 -> [sin(pi/4), sin(pi/4)]
    out = run_method("nuslerp", [t(1, 0), t(0, 1)], None, per_input=[{"weight": 1}, {"weight": -1}])
    close(out, [R2, R2])


def test_nuslerp_with_base_interpolates_task_vectors() -> None:
    # deltas [1,0] and [0,1], t = 0.5 -> b + [0.7071, 0.7071]
    out = run_method(
        "nuslerp",
        [t(1, 1), t(2, 1), t(1, 2)],
        0,
        per_input=[{}, {"weight": 1}, {"weight": 1}],
    )
    close(out, [1 + R2, 1 + R2])


def test_nuslerp_colinear_lerps() -> None:
    # [1,2] and [3,6] are colinear: (1-t) v0 + t v1 with t = 0.25 -> [1.5, 3]
    out = run_method("nuslerp", [t(1, 2), t(3, 6)], None, per_input=[{"weight": 3}, {"weight": 1}])
    close(out, [1.5, 3.0])


X1 = [[1.0, 0.0], [1.0, 0.0]]
X2 = [[0.0, 1.0], [2.0, 0.0]]


def test_nuslerp_per_row_last_axis() -> None:
    # row 0: [1,0] vs [0,1] -> [0.7071, 0.7071]; row 1: [1,0] vs [2,0] colinear -> [1.5, 0]
    out = run_method(
        "nuslerp",
        [torch.tensor(X1), torch.tensor(X2)],
        None,
        {"nuslerp_flatten": False},
        [{"weight": 1}, {"weight": 1}],
    )
    close(out, [[R2, R2], [1.5, 0.0]])


def test_nuslerp_row_wise_first_axis() -> None:
    # vectors are columns. col 0: [1,1] vs [0,2], cos = 2/(sqrt2*2) = 0.7071, theta = pi/4,
    #   S = sin(pi/8)/sin(pi/4) * ([1,1] + [0,2]) = 0.5411961 * [1, 3] = [0.5411961, 1.6235883]
    # col 1: [0,0] vs [1,0]: the zero vector normalises to 0, cos = 0, theta = pi/2,
    #   S = sin(pi/4) * [1, 0] = [0.7071, 0]
    out = run_method(
        "nuslerp",
        [torch.tensor(X1), torch.tensor(X2)],
        None,
        {"nuslerp_flatten": False, "nuslerp_row_wise": True},
        [{"weight": 1}, {"weight": 1}],
    )
    close(out, [[0.5411961, R2], [1.6235883, 0.0]])


def test_nuslerp_flatten_whole_tensor() -> None:
    # one vector each: [1,0,1,0] and [0,1,2,0]; cos = 2/(sqrt2*sqrt5) = 0.63245553,
    # theta = acos(0.63245553), sin theta = sqrt(1 - 0.4); both coefficients sin(theta/2)/sin theta
    theta = math.acos(2 / math.sqrt(10))
    c = math.sin(theta / 2) / math.sin(theta)
    out = run_method(
        "nuslerp",
        [torch.tensor(X1), torch.tensor(X2)],
        None,
        per_input=[{"weight": 1}, {"weight": 1}],
    )
    close(out, [[c * 1, c * 1], [c * 3, 0.0]])


# --- multislerp -------------------------------------------------------------------------------


def test_multislerp_two_orthogonal() -> None:
    # w = [0.5, 0.5]; m = [0.5, 0.5], m_hat = [0.7071, 0.7071], tau = 0; scale = 0.5+0.5
    out = run_method(
        "multislerp", [t(1, 0), t(0, 1)], None, per_input=[{"weight": 1}, {"weight": 1}]
    )
    close(out, [R2, R2])


def test_multislerp_weights_and_norms() -> None:
    # w = [0.25, 0.75]; u = [1,0], [0,1]; m = [0.25, 0.75], ||m|| = sqrt(0.625) = 0.79056942
    # m_hat = [0.31622777, 0.94868330]; scale = 0.25*2 + 0.75*4 = 3.5
    # -> [1.10679718, 3.32039154]
    out = run_method(
        "multislerp", [t(2, 0), t(0, 4)], None, per_input=[{"weight": 1}, {"weight": 3}]
    )
    close(out, [1.10679718, 3.32039154])


def test_multislerp_with_base() -> None:
    # task vectors [2,0] and [0,4] as above, plus b = [1,1]
    out = run_method(
        "multislerp",
        [t(1, 1), t(3, 1), t(1, 5)],
        0,
        per_input=[{}, {"weight": 1}, {"weight": 3}],
    )
    close(out, [2.10679718, 4.32039154])


def test_multislerp_without_weight_normalisation() -> None:
    # w = [1, 1] kept: m = [1,1], m_hat = [0.7071, 0.7071], scale = 1*1 + 1*1 = 2
    out = run_method(
        "multislerp",
        [t(1, 0), t(0, 1)],
        None,
        {"normalize_weights": False},
        [{"weight": 1}, {"weight": 1}],
    )
    close(out, [2 * R2, 2 * R2])


def test_multislerp_antipodal_pair_uses_linear_fallback() -> None:
    # u1 = -u2 -> m = 0 -> 0.5*[1,0] + 0.5*[-3,0] = [-1, 0]
    out = run_method(
        "multislerp", [t(1, 0), t(-3, 0)], None, per_input=[{"weight": 1}, {"weight": 1}]
    )
    close(out, [-1.0, 0.0])


def test_multislerp_antipodal_three_uses_linear_fallback() -> None:
    # MergeKit raises here. u = [1,0], [-1,0], 0 -> m = 0 -> (1/3)([2,0] + [-1,0] + [0,0])
    out = run_method(
        "multislerp",
        [t(2, 0), t(-1, 0), t(0, 0)],
        None,
        per_input=[{"weight": 1}, {"weight": 1}, {"weight": 1}],
    )
    close(out, [1 / 3, 0.0])


def test_multislerp_single_model_returned() -> None:
    x = t(1, 2, 3)
    out = run_method("multislerp", [t(0, 0, 0), x], 0, per_input=[{}, {"weight": 0.3}])
    assert torch.equal(out, x)


# --- karcher ----------------------------------------------------------------------------------


def test_karcher_orthogonal_pair() -> None:
    # m0 = normalise([0.5, 0.5]); the tangent terms cancel ([0.5,-0.5] + [-0.5,0.5]) -> stop;
    # scale = 0.5*1 + 0.5*1
    close(run_method("karcher", [t(1, 0), t(0, 1)]), [R2, R2])


def test_karcher_scales_by_mean_norm() -> None:
    # same direction as above; scale = 0.5*2 + 0.5*4 = 3 -> 3*[0.7071, 0.7071]
    close(run_method("karcher", [t(2, 0), t(0, 4)]), [3 * R2, 3 * R2])


def test_karcher_three_axes() -> None:
    # symmetric: m = [1,1,1]/sqrt3 = 0.57735027 each, scale 1
    out = run_method("karcher", [t(1, 0, 0), t(0, 1, 0), t(0, 0, 1)])
    close(out, [0.57735027] * 3)


def test_karcher_iterates_to_the_mean_angle() -> None:
    # angles 0, 0, pi/2: the Karcher mean on the circle is the mean angle pi/6 (one exact step
    # on a circle), not the normalised linear mean at atan(1/2). -> [cos pi/6, sin pi/6]
    out = run_method("karcher", [t(1, 0), t(1, 0), t(0, 1)])
    close(out, [0.8660254, 0.5], tol=1e-5)


def test_karcher_drops_zero_inputs_but_counts_them_in_the_scale() -> None:
    # [0,0] is dropped (norm <= tol); m = [0.6, 0.8]; scale = 0.5*0 + 0.5*5 = 2.5
    close(run_method("karcher", [t(0, 0), t(3, 4)]), [1.5, 2.0])


def test_karcher_all_zero_gives_zeros() -> None:
    out = run_method("karcher", [t(0, 0), t(0, 0)])
    assert torch.equal(out, t(0, 0))


def test_karcher_includes_a_given_base() -> None:
    # base "ignored": it is one more input -> same as the three-axes case
    out = run_method("karcher", [t(1, 0, 0), t(0, 1, 0), t(0, 0, 1)], base_index=0)
    close(out, [0.57735027] * 3)


@pytest.mark.parametrize("max_iter", [0, 1])
def test_karcher_max_iter(max_iter: int) -> None:
    # With no iteration the start (normalised mean of units) is returned: atan(1/2) direction.
    out = run_method("karcher", [t(1, 0), t(1, 0), t(0, 1)], shared={"max_iter": max_iter})
    if max_iter == 0:
        close(out, [2 / math.sqrt(5), 1 / math.sqrt(5)])
    else:
        close(out, [0.8660254, 0.5], tol=1e-5)
