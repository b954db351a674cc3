"""Golden values for parameter resolution (spec 2.3), worked out by hand."""

from __future__ import annotations

import pytest

from meldkit.config.params import evaluate_setting, layer_depth, resolve_parameter
from meldkit.config.schema import FilterEntry


def test_layer_depth():
    assert layer_depth(0, 32) == 0.0
    assert layer_depth(31, 32) == 1.0
    assert layer_depth(8, 17) == 0.5
    assert layer_depth(0, 1) == 1.0  # MergeKit: a one-layer slice sits at t=1


@pytest.mark.parametrize(
    ("values", "t", "expected"),
    [
        ((0.0, 1.0), 0.5, 0.5),
        # 4 values, t=0.5 -> scaled 1.5 -> halfway between v[1]=0.4 and v[2]=0.6
        ((0.0, 0.4, 0.6, 1.0), 0.5, 0.5),
        # t=1/3 -> scaled 1.0 exactly -> v[1]
        ((0.0, 0.4, 0.6, 1.0), 1 / 3, 0.4),
        # t=0.25 -> scaled 0.75 -> 0.25*0.0 + 0.75*0.4 = 0.3
        ((0.0, 0.4, 0.6, 1.0), 0.25, 0.3),
        ((0.2, 0.8), 1.0, 0.8),
        ((0.7,), 0.3, 0.7),
    ],
)
def test_gradient_interpolation(values, t, expected):
    assert evaluate_setting(values, "x", t) == pytest.approx(expected)


def test_gradient_of_bools_picks_floor():
    # t*(n-1) = 0.9 -> floor 0 -> first value, no interpolation
    assert evaluate_setting((True, False), "x", 0.9) is True
    assert evaluate_setting((True, False), "x", 1.0) is False


def test_empty_gradient_is_unset():
    assert evaluate_setting((), "x", 0.5) is None


def test_filters_first_match_wins_and_fall_through():
    setting = (
        FilterEntry("self_attn", 0.1),
        FilterEntry("mlp", (0.0, 1.0)),
        FilterEntry("attn", 0.9),
    )
    assert evaluate_setting(setting, "model.layers.3.self_attn.q_proj.weight", 0.5) == 0.1
    assert evaluate_setting(setting, "model.layers.3.mlp.up_proj.weight", 0.25) == pytest.approx(
        0.25
    )
    assert evaluate_setting(setting, "model.norm.weight", 0.0) is None  # no match -> unset


def test_filter_star_and_missing_filter_match_everything():
    assert evaluate_setting((FilterEntry("*", 3),), "anything", 0.0) == 3
    assert evaluate_setting((FilterEntry("mlp", 1), FilterEntry(None, 2)), "norm", 0.0) == 2


def test_precedence_most_specific_scope_wins_and_none_falls_through():
    source = {"weight": (FilterEntry("mlp", 0.9),)}
    slice_ = {"weight": 0.5}
    top = {"weight": 0.1, "density": 0.3}
    assert resolve_parameter("weight", [source, slice_, None, top], "layers.0.mlp.x", 0.0) == 0.9
    # the source's filter does not match, so the slice scope answers
    assert resolve_parameter("weight", [source, slice_, None, top], "layers.0.attn.x", 0.0) == 0.5
    assert resolve_parameter("density", [source, slice_, None, top], "x", 0.0) == 0.3
    assert resolve_parameter("lambda", [source, slice_, None, top], "x", 0.0) is None
