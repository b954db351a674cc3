"""Properties every method must have: identical inputs come back, no NaN, no mutation."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from meldkit.methods import list_methods
from meldkit.methods.registry import MethodSpec
from tests.methods.helpers import run_method

METHODS = [s.name for s in list_methods()]
# Values for the required parameters (and a DELLA-valid density) used by the property tests.
REQUIRED = {"weight": [0.3, 0.7, 1.0, 0.5], "t": 0.5, "density": 0.5}


def layouts(spec: MethodSpec) -> list[tuple[int, int | None]]:
    """(number of inputs, base_index) combinations allowed by the method's contract."""
    out = []
    for base_index in {
        "required": [0, 1],
        "optional": [None, 1],
        "ignored": [None, 0],
        "forbidden": [None],
    }[spec.base]:
        has_base = base_index is not None
        for n in (1, 2, 3, 4):
            if n < spec.min_inputs or (spec.max_inputs is not None and n > spec.max_inputs):
                continue
            non_base = n - has_base
            if non_base < spec.min_non_base:
                continue
            if spec.max_non_base is not None and non_base > spec.max_non_base:
                continue
            if base_index is not None and base_index >= n:
                continue
            out.append((n, base_index))
    return out


def params_for(spec: MethodSpec, n: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    shared: dict[str, Any] = {}
    per: list[dict[str, Any]] = [{} for _ in range(n)]
    for p in spec.params:
        if p.name not in REQUIRED or (not p.required and p.name != "density"):
            continue
        value = REQUIRED[p.name]
        if p.scope == "shared":
            shared[p.name] = value
        else:
            for i in range(n):
                per[i][p.name] = value[i] if isinstance(value, list) else value
    return shared, per


CASES = {
    "random": lambda: torch.randn(3, 5, generator=torch.Generator().manual_seed(7)),
    "zeros": lambda: torch.zeros(4, 3),
    "one_element": lambda: torch.tensor([0.37]),
    "scalar": lambda: torch.tensor(-1.25),
    "one_element_zero": lambda: torch.zeros(1),
    "column": lambda: torch.randn(6, 1, generator=torch.Generator().manual_seed(3)),
    "float64": lambda: torch.randn(
        2, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name", METHODS)
def test_identical_inputs_come_back(name: str, case: str) -> None:
    """HARD RULE: a tensor identical in every input never raises or yields NaN, with any method,
    and (every method has this fixed point) comes back unchanged."""
    spec = next(s for s in list_methods() if s.name == name)
    for n, base_index in layouts(spec):
        x = CASES[case]()
        inputs = [x.clone() for _ in range(n)]
        shared, per = params_for(spec, n)
        out = run_method(name, inputs, base_index, shared, per)
        assert out.shape == x.shape and out.dtype == x.dtype, (name, n, base_index)
        assert torch.isfinite(out).all(), (name, n, base_index)
        torch.testing.assert_close(
            out, x, atol=1e-6, rtol=1e-5, msg=f"{name} n={n} base={base_index}"
        )
        for y in inputs:
            assert torch.equal(y, x), f"{name} modified an input"


finite = st.floats(min_value=-4.0, max_value=4.0, allow_nan=False, width=32)


@st.composite
def tensor_sets(draw: st.DrawFn) -> tuple[list[torch.Tensor], tuple[int, ...]]:
    shape = draw(st.sampled_from([(), (1,), (5,), (2, 3), (4, 1), (3, 4)]))
    numel = 1
    for d in shape:
        numel *= d
    tensors = []
    for _ in range(4):
        values = draw(st.lists(finite, min_size=numel, max_size=numel))
        tensors.append(torch.tensor(values, dtype=torch.float32).reshape(shape))
    return tensors, shape


@pytest.mark.parametrize("name", METHODS)
@settings(max_examples=25, deadline=None)
@given(data=tensor_sets())
def test_random_inputs_stay_finite(
    name: str, data: tuple[list[torch.Tensor], tuple[int, ...]]
) -> None:
    tensors, shape = data
    spec = next(s for s in list_methods() if s.name == name)
    for n, base_index in layouts(spec):
        inputs = [x.clone() for x in tensors[:n]]
        shared, per = params_for(spec, n)
        out = run_method(name, inputs, base_index, shared, per)
        assert out.shape == shape and out.dtype == torch.float32
        assert torch.isfinite(out).all(), (name, n, base_index, inputs)
        for x, y in zip(inputs, tensors[:n], strict=True):
            assert torch.equal(x, y), f"{name} modified an input"


@settings(max_examples=30, deadline=None)
@given(data=tensor_sets(), weight=st.floats(min_value=0.05, max_value=5.0))
def test_one_model_linear_is_identity(
    data: tuple[list[torch.Tensor], tuple[int, ...]], weight: float
) -> None:
    x = data[0][0]
    out = run_method("linear", [x], None, per_input=[{"weight": weight}])
    torch.testing.assert_close(out, x, atol=1e-6, rtol=1e-6)


def test_passthrough_scale() -> None:
    x = torch.tensor([1.0, -2.0])
    assert torch.equal(run_method("passthrough", [x]), x)
    torch.testing.assert_close(run_method("passthrough", [x], per_input=[{"scale": 0.5}]), x * 0.5)


@pytest.mark.parametrize("name", ["slerp", "nearswap"])
def test_t_zero_returns_base(name: str) -> None:
    b = torch.tensor([0.3, -1.0, 2.0])
    x = torch.tensor([1.0, 1.0, -1.0])
    torch.testing.assert_close(run_method(name, [x, b], 1, {"t": 0.0}), b)
