"""RAM, RAM+ (tensor-local) and NearSwap: the fused CPU kernels give the eager path's bits.

The eager path has the hand-worked golden tests (test_base_relative.py); here both paths run
on the same inputs, with deltas on a coarse grid (exact ties with epsilon, zeros, both signs)
and values straddling an epsilon that float32 cannot hold, so the comparison rule is checked.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from meldkit.methods import MergeContext, get_method, kernel_runner, load_merge_function, ram
from tests.methods.helpers import resolve_params

pytestmark = pytest.mark.skipif(kernel_runner.load("kernels_ram") is None, reason="numba not installed")


def _inputs(shape: tuple[int, ...], n_models: int, dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
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


def _run(method: str, inputs: list[torch.Tensor], shared: dict[str, Any], out_dtype: str | None) -> torch.Tensor:
    spec = get_method(method)
    shared_v, per_v = resolve_params(spec, len(inputs), 0, shared)
    ctx = MergeContext("model.layers.1.mlp.up_proj.weight", 0, "cpu", out_dtype)
    return load_merge_function(spec)(list(inputs), 0, shared_v, per_v, ctx)


def _eager(monkeypatch: pytest.MonkeyPatch, *args: Any) -> torch.Tensor:
    with monkeypatch.context() as m:
        m.setattr(ram, "fused_kernels", lambda *a: None)
        return _run(*args)


@pytest.mark.parametrize("method", ["ram", "ramplus_tl"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
@pytest.mark.parametrize("out_dtype", [None, "BF16"])
@pytest.mark.parametrize("shape", [(7,), (40_000,), (130, 257)])
def test_fused_equals_eager(monkeypatch: pytest.MonkeyPatch, method: str, dtype: torch.dtype,
                            out_dtype: str | None, shape: tuple[int, ...]) -> None:
    inputs = _inputs(shape, 3, dtype, seed=len(shape))
    for shared in ({"epsilon": 0.1, "r": 0.5, "alpha": 0.9}, {"epsilon": 0.125}, {"epsilon": 0.0}):
        fused = _run(method, inputs, shared, out_dtype)
        reference = _eager(monkeypatch, method, inputs, shared, out_dtype)
        assert fused.dtype == (torch.bfloat16 if out_dtype == "BF16" else torch.float32)
        assert fused.shape == inputs[0].shape
        assert torch.equal(fused, reference.to(fused.dtype)), (method, shared)


def test_ramplus_boost_comes_from_whole_tensor_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    # Unique entries only in the last chunk: the boost must still use the tensor's counts.
    n = 3 * (1 << 14) + 5
    base = torch.zeros(n)
    a, b = base.clone(), base.clone()
    a[: 1 << 14] = 1.0
    b[: 1 << 14] = 1.0  # shared everywhere in chunk 0
    a[-4:] = 2.0  # unique to a at the end
    out = _run("ramplus_tl", [base, a, b], {"epsilon": 0.1, "r": 0.5, "alpha": 1e9}, None)
    # ρ_a = 16384 / 4, λ_a = 1 + 0.5 · 4096
    assert float(out[-1]) == 2.0 * (1 + 0.5 * 4096)
    assert float(out[0]) == 1.0
    assert torch.equal(out, _eager(monkeypatch, "ramplus_tl", [base, a, b], {"epsilon": 0.1, "r": 0.5, "alpha": 1e9}, None))


def test_thread_count_does_not_change_bytes() -> None:
    inputs = _inputs((300, 301), 2, torch.bfloat16, seed=3)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run("ramplus_tl", inputs, {"epsilon": 0.1}, "BF16")
        torch.set_num_threads(2)
        two = _run("ramplus_tl", inputs, {"epsilon": 0.1}, "BF16")
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_float64_inputs_take_the_eager_path() -> None:
    inputs = [x.double() for x in _inputs((50,), 2, torch.float32, seed=1)]
    assert ram.fused_kernels(inputs, MergeContext("w", 0, "cpu")) is None
    assert _run("ram", inputs, {"epsilon": 0.1}, None).dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
@pytest.mark.parametrize("out_dtype", [None, "BF16"])
def test_nearswap_kernel_equals_eager(monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype,
                                      out_dtype: str | None) -> None:
    g = torch.Generator().manual_seed(4)
    base = torch.randn(300, 170, generator=g)
    # Distances from 0 (the 1e-6 floor) through t to far beyond it; one NaN.
    other = base + torch.randn(300, 170, generator=g) * torch.logspace(-8, 0, 170)
    other[0, :5] = base[0, :5]
    other[1, 0] = float("nan")
    inputs = [base.to(dtype), other.to(dtype)]
    fused = _run("nearswap", inputs, {"t": 0.001}, out_dtype)
    with monkeypatch.context() as m:
        m.setattr(kernel_runner, "load", lambda name: None)
        reference = _run("nearswap", inputs, {"t": 0.001}, out_dtype)
    assert fused.dtype == (torch.bfloat16 if out_dtype == "BF16" else torch.float32)
    assert torch.isnan(fused[1, 0])
    assert torch.equal(fused.nan_to_num(), reference.to(fused.dtype).nan_to_num())
