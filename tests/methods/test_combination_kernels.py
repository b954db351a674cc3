"""The numba kernels behind meldkit.methods.combination (kernels_combination).

The Gram kernel forms ``v = A x`` in float32 (exactly the torch path's differences) and sums
exact float64 products, so it is compared with a float64 reference built from the same float32
``v`` at a tight relative tolerance, and with an all-float64 reference at ~1e-6. The
combination kernel computes ``Σ c_i x_i`` in float32 in input order: within float32 rounding
of a float64 reference, and for bfloat16 output the float32 value rounded to nearest even.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from meldkit.methods import MergeContext, combination, kernel_runner
from meldkit.methods import slerp as slerp_method
from meldkit.methods.slerp import slerp
from tests.methods.helpers import run_method

pytestmark = pytest.mark.skipif(kernel_runner.load("kernels_combination") is None, reason="numba not installed")

DTYPES = [torch.bfloat16, torch.float32, torch.float16]


def _inputs(shape: tuple[int, ...], n: int, dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    return [base.to(dtype)] + [(base + 0.05 * torch.randn(shape, generator=g)).to(dtype) for _ in range(n - 1)]


def _torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(combination, "_kernels", lambda inputs: None)


def _reference_gram(inputs: list[torch.Tensor], mix: torch.Tensor, rows: int, exact_v: bool) -> torch.Tensor:
    """Per row, ``V Vᵀ`` in float64; ``V`` computed in float32 as the kernels do (the
    differences of the mix rows), or in float64 when ``exact_v``."""
    x = torch.stack([t.reshape(rows, -1).double() for t in inputs])  # (N, rows, L)
    v = torch.einsum("kn,nrl->rkl", mix, x)
    if not exact_v:
        x32 = torch.stack([t.reshape(rows, -1).float() for t in inputs])
        v = torch.einsum("kn,nrl->rkl", mix.float(), x32).double()
    return v @ v.transpose(1, 2)


def _assert_gram_close(g: torch.Tensor, ref: torch.Tensor, rel: float) -> None:
    assert g.dtype == torch.float64 and g.shape == ref.shape
    diag = ref.diagonal(dim1=1, dim2=2).clamp_min(0)
    scale = (diag.unsqueeze(-1) * diag.unsqueeze(-2)).sqrt()  # |G_kl| <= sqrt(G_kk G_ll)
    assert torch.all((g - ref).abs() <= rel * scale + 1e-300), (g - ref).abs().max()


def _bf16_ulp(x: torch.Tensor) -> torch.Tensor:
    _, e = torch.frexp(x)  # |x| in [2^(e-1), 2^e): bf16 spacing 2^(e-8)
    return torch.ldexp(torch.ones_like(x), (e - 8).clamp_min(-133))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 5])
def test_gram_matches_float64(dtype: torch.dtype, rows: int) -> None:
    inputs = _inputs((5, 3000), 4, dtype, seed=1)
    mix = combination.differences(4, [(1, 0), (2, 0), (3, 0)])
    assert combination.uses_kernels(inputs)
    g = combination.gram(inputs, mix, rows)
    _assert_gram_close(g, _reference_gram(inputs, mix, rows, exact_v=False), 1e-12)
    _assert_gram_close(g, _reference_gram(inputs, mix, rows, exact_v=True), 1e-6)
    plain = combination.gram(inputs, None, rows)  # mix None: the inputs themselves
    _assert_gram_close(plain, _reference_gram(inputs, torch.eye(4, dtype=torch.float64), rows, False), 1e-12)


def test_gram_general_mix_and_mixed_dtypes() -> None:
    inputs = _inputs((4000,), 3, torch.float32, seed=2)
    inputs[1] = inputs[1].to(torch.bfloat16)  # mixed dtypes: widened to float32
    mix = torch.tensor([[0.5, 0.25, -1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    g = combination.gram(inputs, mix)
    _assert_gram_close(g, _reference_gram(inputs, mix, 1, exact_v=False), 1e-12)
    assert torch.all(g[0, 1] == 0) and torch.all(g[0, :, 1] == 0)


@pytest.mark.parametrize("rows,length", [(1, 3 * (1 << 16) + 123), (3, (1 << 16) + 5)])
def test_gram_many_blocks(rows: int, length: int) -> None:
    inputs = _inputs((rows, length), 3, torch.bfloat16, seed=3)
    mix = combination.differences(3, [(1, 0), (2, 0), (1, 2)])
    g = combination.gram(inputs, mix, rows)
    _assert_gram_close(g, _reference_gram(inputs, mix, rows, exact_v=False), 1e-12)


def test_small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(combination, "BLOCK_ELEMENTS", 7)  # many ragged items per row
    inputs = _inputs((4, 30), 3, torch.bfloat16, seed=4)
    mix = combination.differences(3, [(1, 0), (2, 0)])
    for rows in (1, 4):
        g = combination.gram(inputs, mix, rows)
        _assert_gram_close(g, _reference_gram(inputs, mix, rows, exact_v=False), 1e-12)
        coeffs = torch.rand(rows, 3, generator=torch.Generator().manual_seed(rows), dtype=torch.float64)
        out = combination.combine(inputs, coeffs, torch.float32)
        ref = (coeffs.T.reshape(3, rows, 1) * torch.stack([x.double().reshape(rows, -1) for x in inputs])).sum(0)
        torch.testing.assert_close(out.double().reshape(rows, -1), ref, rtol=1e-6, atol=1e-6)


def test_tiny_and_empty() -> None:
    one = [torch.tensor([2.0], dtype=torch.bfloat16), torch.tensor([3.5])]
    assert torch.equal(combination.gram(one), torch.tensor([[[4.0, 7.0], [7.0, 12.25]]], dtype=torch.float64))
    out = combination.combine(one, torch.tensor([0.5, 2.0], dtype=torch.float64), torch.bfloat16)
    assert out.dtype == torch.bfloat16 and out.tolist() == [8.0]
    empty = [torch.empty(0, dtype=torch.bfloat16), torch.empty(0, dtype=torch.bfloat16)]
    mix = combination.differences(2, [(1, 0)])
    assert torch.equal(combination.gram(empty, mix), torch.zeros(1, 1, 1, dtype=torch.float64))
    out = combination.combine(empty, torch.tensor([0.5, 0.5], dtype=torch.float64), torch.bfloat16)
    assert out.shape == (0,) and out.dtype == torch.bfloat16
    empty_rows = [torch.empty(3, 0), torch.empty(3, 0)]
    assert torch.equal(combination.gram(empty_rows, mix, 3), torch.zeros(3, 1, 1, dtype=torch.float64))


def _combine_reference(inputs: list[torch.Tensor], coeffs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``Σ c x`` and ``Σ |c x|`` in float64, per row of the ``(rows, -1)`` view."""
    c = coeffs.reshape(-1, len(inputs)).T.unsqueeze(-1)  # (N, rows, 1)
    x = torch.stack([t.double().reshape(c.shape[1], -1) for t in inputs])
    return (c * x).sum(0).reshape(-1), (c * x).abs().sum(0).reshape(-1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 7])
def test_combine_matches_float64(dtype: torch.dtype, rows: int) -> None:
    inputs = _inputs((7, 20000), 4, dtype, seed=5)
    g = torch.Generator().manual_seed(6)
    coeffs = torch.rand(rows, 4, generator=g, dtype=torch.float64) * 2 - 0.5
    if rows == 1:
        coeffs = coeffs[0]
    ref, size = _combine_reference(inputs, coeffs)
    rounding = 9 * 2.0**-24 * size  # float32: N products and N - 1 sums, each within half an ulp
    f32 = combination.combine(inputs, coeffs, torch.float32)
    assert f32.dtype == torch.float32 and f32.shape == inputs[0].shape
    assert torch.all((f32.reshape(-1).double() - ref).abs() <= rounding)
    bf16 = combination.combine(inputs, coeffs, torch.bfloat16)
    assert bf16.dtype == torch.bfloat16
    assert torch.equal(bf16, f32.to(torch.bfloat16))  # rounded once, to nearest even
    assert torch.all((bf16.reshape(-1).double() - ref).abs() <= _bf16_ulp(ref) + rounding)
    f16 = combination.combine(inputs, coeffs, torch.float16)  # other dtypes: float32, then cast
    assert torch.equal(f16, f32.to(torch.float16))


def test_bf16_rounding_ties_and_specials() -> None:
    bits = torch.tensor([0x3F808000, 0x3F818000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x00000001, 0x80000000,
                         0x7F7FFFFF], dtype=torch.int64).to(torch.int32)
    x = bits.view(torch.float32)
    out = combination.combine([x], torch.tensor([1.0], dtype=torch.float64), torch.bfloat16)
    expected = x.to(torch.bfloat16)
    assert torch.equal(out.view(torch.int16)[:4], expected.view(torch.int16)[:4])
    assert out[4].isnan()
    assert torch.equal(out[5:].float(), expected[5:].float())


def test_results_do_not_depend_on_thread_count() -> None:
    inputs = _inputs((3, 150001), 4, torch.bfloat16, seed=7)
    mix = combination.differences(4, [(1, 0), (2, 0), (3, 0)])
    coeffs = torch.tensor([[0.1, 0.3, 0.3, 0.3], [1.0, -0.5, 0.25, 0.25], [0.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    before = torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            runs.append((combination.gram(inputs, mix), combination.gram(inputs, mix, 3),
                         combination.combine(inputs, coeffs[1], torch.bfloat16),
                         combination.combine(inputs, coeffs, torch.float32)))
    finally:
        torch.set_num_threads(before)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert a.dtype == b.dtype and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def test_float64_and_non_contiguous_take_the_torch_path() -> None:
    x = torch.randn(10, 12, dtype=torch.float64)
    assert not combination.uses_kernels([x, x])
    y = torch.randn(12, 10).T
    assert not combination.uses_kernels([y, y])
    g = combination.gram([y, y])
    torch.testing.assert_close(g, torch.full((1, 2, 2), float((y.double() ** 2).sum()), dtype=torch.float64))


@pytest.fixture
def no_numba(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(kernel_runner, "load", lambda name: None)
    yield


def test_without_numba_the_torch_path_runs(no_numba: None) -> None:
    inputs = _inputs((6, 500), 3, torch.bfloat16, seed=8)
    assert not combination.uses_kernels(inputs)
    mix = combination.differences(3, [(1, 0), (2, 0)])
    _assert_gram_close(combination.gram(inputs, mix, 6), _reference_gram(inputs, mix, 6, exact_v=False), 1e-5)
    coeffs = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    ref, size = _combine_reference(inputs, coeffs)
    out = combination.combine(inputs, coeffs, torch.float32)
    assert torch.all((out.reshape(-1).double() - ref).abs() <= 9 * 2.0**-24 * size)


@pytest.mark.parametrize("method,shared", [
    ("model_stock", {}), ("model_stock", {"filter_wise": True}), ("nuslerp", {}),
    ("nuslerp", {"nuslerp_flatten": False}), ("multislerp", {}), ("karcher", {}), ("slerp", {"t": 0.3}),
])
def test_methods_agree_with_the_torch_path(method: str, shared: dict[str, object],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    n = {"nuslerp": 3, "slerp": 2}.get(method, 4)
    inputs = _inputs((64, 300), n, torch.bfloat16, seed=9)
    base = None if method == "karcher" else 0
    kernel = run_method(method, inputs, base, shared, per_input={"weight": 1.0})
    _torch_path(monkeypatch)
    monkeypatch.setattr(combination, "uses_kernels", lambda inputs: False)  # slerp's own path
    eager = run_method(method, inputs, base, shared, per_input={"weight": 1.0})
    assert kernel.dtype == eager.dtype == torch.float32
    torch.testing.assert_close(kernel, eager, rtol=1e-5, atol=1e-5)


def test_slerp_writes_the_output_dtype() -> None:
    a, b = _inputs((1000,), 2, torch.bfloat16, seed=10)
    f32 = slerp(0.4, a, b)
    assert f32.dtype == torch.float32
    bf16 = slerp(0.4, a, b, "BF16")
    assert torch.equal(bf16, f32.to(torch.bfloat16))
    assert torch.equal(run_method("slerp", [a, b], 0, {"t": 0.4}), f32)
    merged = slerp_method.merge([a, b], 0, {"t": 0.4}, [{}, {}], MergeContext("x", out_dtype="BF16"))
    assert torch.equal(merged, bf16)
