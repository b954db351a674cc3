"""ram and ramplus_tl: the fast path (:mod:`meldkit.kernels.ram`) gives the reference's bits.

The reference (:mod:`meldkit.methods.ram`, :mod:`meldkit.methods.ramplus_tl`, called
directly) has the hand-worked golden tests (tests/methods/test_base_relative.py); here both run
on the same inputs, with deltas on a coarse grid (exact ties with epsilon, zeros, both signs)
and values straddling an epsilon that float32 cannot hold, so the comparison rule is checked.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from meldkit.kernels import ram as fast_ram
from meldkit.kernels import runner
from meldkit.methods import MergeContext, get_method, load_merge_function
from tests.kernels.helpers import both, set_threads
from tests.methods.helpers import reference_function, resolve_params

pytestmark = pytest.mark.skipif(runner.load("ram_numba") is None, reason="numba not installed")


def ram_inputs(
    shape: tuple[int, ...], n_models: int, dtype: torch.dtype, seed: int
) -> list[torch.Tensor]:
    """A base and models with deltas on a grid of 1/8, the first ones around ±0.1."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    deltas = [torch.randint(-3, 4, shape, generator=g).float() / 8 for _ in range(n_models)]
    # Some deltas around 0.1 (epsilon below): float32(0.1) and its neighbours.
    edge = torch.tensor([0.1, -0.1], dtype=torch.float32)
    near = torch.cat([torch.nextafter(edge, torch.zeros(2)), edge, torch.nextafter(edge, 2 * edge)])
    base.view(-1)[: near.numel()] = 0  # so that x - b gives these values back exactly
    for d in deltas:
        flat = d.view(-1)
        flat[: near.numel()] = near[: flat.numel()]
    return [base.to(dtype)] + [(base + d).to(dtype) for d in deltas]


def _both(
    method: str, inputs: list[torch.Tensor], shared: dict[str, Any], out_dtype: str | None
) -> tuple[torch.Tensor, torch.Tensor]:
    return both(
        method,
        inputs,
        0,
        shared,
        None,
        MergeContext("model.layers.1.mlp.up_proj.weight", 0, "cpu", out_dtype),
    )


@pytest.mark.parametrize("method", ["ram", "ramplus_tl"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
@pytest.mark.parametrize("out_dtype", [None, "BF16"])
@pytest.mark.parametrize("shape", [(7,), (40_000,), (130, 257)])
def test_fast_equals_reference(
    method: str, dtype: torch.dtype, out_dtype: str | None, shape: tuple[int, ...]
) -> None:
    inputs = ram_inputs(shape, 3, dtype, seed=len(shape))
    for shared in ({"epsilon": 0.1, "r": 0.5, "alpha": 0.9}, {"epsilon": 0.125}, {"epsilon": 0.0}):
        fast, reference = _both(method, inputs, shared, out_dtype)
        assert fast.dtype == (torch.bfloat16 if out_dtype == "BF16" else torch.float32)
        assert fast.shape == inputs[0].shape
        assert torch.equal(fast, reference.to(fast.dtype)), (method, shared)


def test_ramplus_boost_comes_from_whole_tensor_counts() -> None:
    # Unique entries only in the last chunk: the boost must still use the tensor's counts.
    n = 3 * (1 << 14) + 5
    base = torch.zeros(n)
    a, b = base.clone(), base.clone()
    a[: 1 << 14] = 1.0
    b[: 1 << 14] = 1.0  # shared everywhere in chunk 0
    a[-4:] = 2.0  # unique to a at the end
    fast, reference = _both(
        "ramplus_tl", [base, a, b], {"epsilon": 0.1, "r": 0.5, "alpha": 1e9}, None
    )
    # ρ_a = 16384 / 4, λ_a = 1 + 0.5 · 4096
    assert float(fast[-1]) == 2.0 * (1 + 0.5 * 4096)
    assert float(fast[0]) == 1.0
    assert torch.equal(fast, reference)


@pytest.mark.parametrize("method", ["ram", "ramplus_tl"])
def test_thread_count_does_not_change_bytes(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = ram_inputs((300, 301), 2, torch.bfloat16, seed=3)
    results = []
    for threads in (1, 2, 3):
        set_threads(monkeypatch, threads)
        results.append(_both(method, inputs, {"epsilon": 0.1}, "BF16"))
    for fast, reference in results:
        assert torch.equal(fast, results[0][0]) and torch.equal(fast, reference.to(fast.dtype))


@pytest.mark.parametrize("method", ["ram", "ramplus_tl"])
def test_float64_inputs_take_the_reference(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = [x.double() for x in ram_inputs((50,), 2, torch.float32, seed=1)]
    spec = get_method(method)
    shared, per = resolve_params(spec, 3, 0, {"epsilon": 0.1})
    ctx = MergeContext("w", 0, "cpu")
    assert not fast_ram.ram.supports(inputs, 0, shared, per, ctx)
    assert not fast_ram.ramplus_tl.supports(inputs, 0, shared, per, ctx)
    monkeypatch.setattr(fast_ram, "_stored", lambda *a: pytest.fail("the fast path ran"))
    out = load_merge_function(spec)(list(inputs), 0, shared, per, ctx)
    assert out.dtype == torch.float64
    assert torch.equal(out, reference_function(method)(list(inputs), 0, shared, per, ctx))


def test_not_supported_without_a_base_or_numba(monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = ram_inputs((50,), 2, torch.bfloat16, seed=2)
    shared, per = resolve_params(get_method("ram"), 3, 0, {"epsilon": 0.1})
    ctx = MergeContext("w", 0, "cpu")
    assert fast_ram.ram.supports(inputs, 0, shared, per, ctx)
    assert not fast_ram.ram.supports(inputs, None, shared, per, ctx)
    assert not fast_ram.ram.supports(inputs[:1], 0, shared, per[:1], ctx)
    assert not fast_ram.ram.supports(inputs, 0, shared, per, MergeContext("w", 0, "cuda"))
    monkeypatch.setattr(runner, "load", lambda name: None)
    assert not fast_ram.ram.supports(inputs, 0, shared, per, ctx)
