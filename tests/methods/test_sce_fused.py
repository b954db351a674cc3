"""The fused sce kernels give the blocked eager path's results bit for bit.

The eager path (:func:`meldkit.methods.sce._blocked`, with the fused path switched off) has
the golden tests; here both run on the same inputs with deltas on a coarse grid, so that many
variances are exactly equal and the tie rule at the top-k cut-off is exercised, and the
outputs must be identical, in float32 and in bfloat16.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from meldkit.io.dtypes import torch_dtype
from meldkit.methods import MergeContext, get_method, kernel_runner, sce, sce_fused
from tests.methods.helpers import resolve_params, tied_inputs

pytestmark = pytest.mark.skipif(not sce_fused.available(), reason="numba not installed")


@pytest.fixture
def eager(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A function that runs sce with the fused path switched off."""

    def run(*args: Any) -> torch.Tensor:
        with monkeypatch.context() as m:
            m.setattr(sce_fused, "supports", lambda *a: False)
            return sce.merge(*args)

    yield run


_inputs = tied_inputs


def _both(inputs: list[torch.Tensor], topk: float, eager: Any, out_dtype: str | None = None,
          base_index: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    shared, per = resolve_params(get_method("sce"), len(inputs), base_index, {"select_topk": topk})
    ctx = MergeContext("model.layers.1.self_attn.q_proj.weight", 5, "cpu", out_dtype)
    assert sce_fused.supports(inputs, ctx)
    fused = sce.merge(list(inputs), base_index, shared, per, ctx)
    reference = eager(list(inputs), base_index, shared, per, MergeContext(ctx.name, 5, "cpu"))
    if out_dtype is not None:
        reference = reference.to(torch_dtype(out_dtype))
    return fused, reference


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bits (NaN and the sign of zero included)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    bits = torch.int16 if a.element_size() == 2 else torch.int32
    return torch.equal(a.view(bits), b.view(bits))


TOPKS = [0.0, 0.1, 0.37, 0.5, 0.93, 1.0]


@pytest.mark.parametrize("topk", TOPKS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("out_dtype", [None, "BF16"])
@pytest.mark.parametrize("n_models", [2, 3])
def test_fused_equals_eager(topk: float, dtype: torch.dtype, out_dtype: str | None, n_models: int,
                            eager: Any) -> None:
    inputs = _inputs((70000,), n_models, dtype, seed=n_models)  # several chunks and a partial one
    fused, reference = _both(inputs, topk, eager, out_dtype)
    assert fused.dtype == (torch.bfloat16 if out_dtype == "BF16" else torch.float32)
    assert _same(fused, reference)


@pytest.mark.parametrize("shape", [(1,), (7,), (5, 3), (2, 3, 4), (130, 257), (3, 41, 800)])
@pytest.mark.parametrize("topk", [0.3, 0.5, 0.8])
def test_fused_equals_eager_across_shapes(shape: tuple[int, ...], topk: float, eager: Any) -> None:
    inputs = _inputs(shape, 3, torch.bfloat16, seed=7)
    for out_dtype in (None, "BF16", "F16"):
        fused, reference = _both(inputs, topk, eager, out_dtype)
        assert fused.shape == torch.Size(shape)
        assert _same(fused, reference)


def test_partial_ties_are_exercised(monkeypatch: pytest.MonkeyPatch, eager: Any) -> None:
    # The inputs above put the cut-off inside a run of thousands of equal variances, spread
    # over the chunks: the chunk where the budget of dropped ties runs out is redone.
    inputs = _inputs((70000,), 3, torch.float32, seed=3)
    var = sce._variance([x - inputs[0] for x in inputs[1:]]).reshape(-1)
    k = int(int(torch.count_nonzero(var)) * 0.37)
    cut = var.sort(descending=True).values[k - 1]
    assert int((var == cut).sum()) > 1000
    assert int((var > cut).sum()) < k < int((var >= cut).sum())
    module = sce_fused.kernels()
    redone: list[int] = []
    real = module.energy_lanes_resolved  # type: ignore[union-attr]

    def resolved(*args: Any) -> Any:
        redone.append(args[2])
        return real(*args)

    monkeypatch.setattr(module, "energy_lanes_resolved", resolved)
    fused, reference = _both(inputs, 0.37, eager)
    assert _same(fused, reference)
    assert len(redone) == 1 and 0 < redone[0] < 4  # not the first chunk, nor the last


def test_base_not_first_and_mixed_dtypes(eager: Any) -> None:
    inputs = _inputs((300, 170), 3, torch.float32, seed=8)
    inputs[2] = inputs[2].to(torch.bfloat16)
    inputs[3] = inputs[3].to(torch.float16)
    inputs = [inputs[1], inputs[2], inputs[0], inputs[3]]
    fused, reference = _both(inputs, 0.4, eager, base_index=2)
    assert _same(fused, reference)


def test_special_values(eager: Any) -> None:
    inputs = _inputs((4000,), 3, torch.float32, seed=9)
    inputs[1][5] = float("inf")
    inputs[2][17] = float("nan")
    inputs[3][40] = -0.0
    inputs[0][40] = -0.0
    inputs[0][41] = 1e-40  # subnormal
    for topk in (0.0, 0.5, 1.0):
        fused, reference = _both(inputs, topk, eager)
        assert _same(fused, reference)


def test_tiny_energies_give_uniform_weights(eager: Any) -> None:
    base = torch.randn(5000, generator=torch.Generator().manual_seed(1))
    inputs = [base, base + 1e-5, base - 2e-5, base.clone()]
    fused, reference = _both(inputs, 0.5, eager)
    assert _same(fused, reference)


def test_empty_tensor(eager: Any) -> None:
    inputs = [torch.zeros(0, 4)] * 3
    fused, reference = _both(inputs, 0.5, eager)
    assert fused.shape == (0, 4) and _same(fused, reference)


@pytest.mark.parametrize("topk", [0.3, 1.0])
def test_eager_block_size_does_not_matter(topk: float, monkeypatch: pytest.MonkeyPatch, eager: Any) -> None:
    # The energies are summed per fixed chunk whatever the blocks: bit for bit the same.
    inputs = _inputs((300, 170), 3, torch.bfloat16, seed=10)
    fused, reference = _both(inputs, topk, eager)
    monkeypatch.setattr(sce, "BLOCK_ELEMENTS", 1000)
    blocked, again = _both(inputs, topk, eager)
    assert _same(fused, reference) and _same(blocked, reference) and _same(again, reference)


def test_thread_count_does_not_change_the_result() -> None:
    inputs = _inputs((500, 300), 3, torch.bfloat16, seed=11)
    shared, per = resolve_params(get_method("sce"), 4, 0, {"select_topk": 0.45})
    ctx = MergeContext("w", 1, "cpu", "BF16")
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(sce.merge(list(inputs), 0, shared, per, ctx))
    finally:
        torch.set_num_threads(before)
    assert all(_same(results[0], r) for r in results[1:])


def test_without_numba_the_eager_path_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = _inputs((3000,), 2, torch.bfloat16, seed=12)
    shared, per = resolve_params(get_method("sce"), 3, 0, {"select_topk": 0.5})
    ctx = MergeContext("w", 1, "cpu")
    fused = sce.merge(list(inputs), 0, shared, per, ctx)
    calls: list[str] = []
    real_load = kernel_runner.load

    def load(name: str) -> Any:
        calls.append(name)
        return None if name == "kernels_sce" else real_load(name)

    monkeypatch.setattr(kernel_runner, "load", load)

    def no_fused(*args: Any) -> torch.Tensor:
        raise AssertionError("the fused path ran")

    monkeypatch.setattr(sce_fused, "merge_sce_fused", no_fused)
    assert not sce_fused.available()
    assert _same(sce.merge(list(inputs), 0, shared, per, ctx), fused)
    assert "kernels_sce" in calls


def test_float64_inputs_take_the_whole_tensor_path(monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = [x.double() for x in _inputs((50,), 2, torch.float32, seed=13)]
    monkeypatch.setattr(sce_fused, "merge_sce_fused", lambda *a: pytest.fail("fused path"))
    out = sce.merge(inputs, 0, {"select_topk": 0.5}, [{}, {}, {}], MergeContext("w"))
    assert out.dtype == torch.float64


def test_square_lanes_add_in_lane_order() -> None:
    module = sce_fused.kernels()
    assert module is not None and module.LANES == sce.LANES
    rng = np.random.default_rng(0)
    v = (rng.standard_normal(1000) * 10.0 ** rng.integers(-30, 30, 1000)).astype(np.float32)
    start = rng.standard_normal(sce.LANES) ** 2
    got = module.square_lanes(v, start.copy())
    want = start.copy()
    for k, x in enumerate(v.astype(np.float64)):
        want[k % sce.LANES] += x * x
    assert np.array_equal(got, want)
    eager = torch.zeros(1, sce.LANES, dtype=torch.float64)
    eager[0] = torch.from_numpy(start)
    sce._add_lanes(eager, 0, torch.from_numpy(v[:300]))
    sce._add_lanes(eager, 300, torch.from_numpy(v[300:]))
    assert np.array_equal(eager[0].numpy(), want)


@pytest.mark.parametrize("fused", [True, False])
def test_multiply_add_matches_torch_rounding(fused: bool) -> None:
    module = sce_fused.kernels()
    assert module is not None
    g = torch.Generator().manual_seed(14)
    a, b, c = (torch.randn(1000, generator=g) for _ in range(3))
    out = module.fma32(a.numpy(), b.numpy(), c.numpy(), fused, np.empty(1000, dtype=np.float32))
    expected = (a.double() * b.double() + c.double()).float() if fused else c + a * b
    # The float64 expression rounds twice when fused; that differs only in rare halfway cases.
    assert (torch.from_numpy(out) != expected).sum() <= (1 if fused else 0)
    if sce_fused.torch_fma() == fused:
        assert torch.equal(torch.from_numpy(out), c.clone().addcmul_(a, b))
