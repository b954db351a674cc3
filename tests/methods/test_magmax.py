"""MagMax: the largest |τ| per entry, hand-worked."""

from __future__ import annotations

import torch

from tests.methods.helpers import run_method, t


def test_magmax_picks_the_largest_magnitude_per_entry() -> None:
    b = t(1.0, 1.0, 1.0, 1.0)
    # (eighths, so every τ = x − b is exact in float32)
    # τ_1 = [ 0.5,  -2.0,  0.125,  0.25]
    # τ_2 = [-0.75,  1.0,  0.0,   -0.25]   entry 3: |0.25| = |-0.25|, the first model wins
    # τ_3 = [ 0.25,  0.5, -0.375,  0.0]
    # pick = [-0.75, -2.0, -0.375, 0.25]; out = 1 + 0.5 · pick
    xs = [
        b + t(0.5, -2.0, 0.125, 0.25),
        b + t(-0.75, 1.0, 0.0, -0.25),
        b + t(0.25, 0.5, -0.375, 0.0),
    ]
    out = run_method("magmax", [b, *xs], 0, {"lambda": 0.5})
    assert torch.equal(out, t(0.625, 0.0, 0.8125, 1.125))


def test_magmax_default_lambda_and_base_position() -> None:
    b = t(0.0, 2.0)
    x = t(4.0, 0.0)  # τ = [4, -2]; default lambda 1 -> b + τ = x
    torch.testing.assert_close(run_method("magmax", [x, b], 1), x)
    # lambda 0.5 -> b + [2, -1] = [2, 1]
    torch.testing.assert_close(run_method("magmax", [x, b], 1, {"lambda": 0.5}), t(2.0, 1.0))
