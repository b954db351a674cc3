"""The blocked torch Gram and combination passes (meldkit.methods.combination) and the reference
methods on them (the numba passes: tests/kernels/test_combination.py)."""

from __future__ import annotations

import pytest
import torch

from meldkit.methods import MergeContext, combination, get_method
from tests.methods.helpers import reference_function, resolve_params


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(combination, "BLOCK_ELEMENTS", 7)  # many blocks, ragged ends


def test_gram_of_differences(small_blocks: None) -> None:
    b = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0])
    x1 = b + torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2.0])
    x2 = b + torch.tensor([0.0, 3.0, 0, 0, 0, 0, 0, 0, 0, 0, 1.0])
    mix = combination.differences(3, [(1, 0), (2, 0)])
    g = combination.gram([b, x1.to(torch.bfloat16), x2], mix)
    # <d1, d1> = 1 + 4, <d2, d2> = 9 + 1, <d1, d2> = 2
    assert torch.equal(g, torch.tensor([[[5.0, 2.0], [2.0, 10.0]]], dtype=torch.float64))


def test_gram_per_row(small_blocks: None) -> None:
    x = torch.arange(12.0).reshape(3, 4)
    g = combination.gram([x], rows=3)
    assert torch.equal(g.reshape(3), (x * x).sum(dim=1).double())


def test_combine_writes_the_output_dtype(small_blocks: None) -> None:
    a = torch.arange(10.0)
    b = torch.ones(10, dtype=torch.bfloat16)
    out = combination.combine([a, b], torch.tensor([0.5, 2.0], dtype=torch.float64), torch.bfloat16)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, (0.5 * a + 2).to(torch.bfloat16))
    rows = combination.combine(
        [a.reshape(2, 5), b.reshape(2, 5)],
        torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64),
        torch.float32,
    )
    assert torch.equal(rows, torch.stack([a[:5], torch.ones(5)]))


def _reference(method: str, inputs: list[torch.Tensor]) -> torch.Tensor:
    shared, per = resolve_params(get_method(method), len(inputs), 0, {}, {"weight": 1.0})
    return reference_function(method)(list(inputs), 0, shared, per, MergeContext("w", 0))


@pytest.mark.parametrize("method", ["karcher", "multislerp", "model_stock", "nuslerp"])
def test_gram_methods_do_not_depend_on_thread_count_or_block_size(
    method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    g = torch.Generator().manual_seed(8)
    base = torch.randn(600, 500, generator=g)
    inputs = [base] + [base + 0.01 * torch.randn(600, 500, generator=g) for _ in range(2)]
    if method != "nuslerp":
        inputs.append(base + 0.01 * torch.randn(600, 500, generator=g))
    before = torch.get_num_threads()
    try:
        runs = []
        for threads in (1, 4):
            torch.set_num_threads(threads)
            runs.append(_reference(method, inputs))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(runs[0], runs[1])
    # Whole-tensor blocks give the same result up to float rounding.
    monkeypatch.setattr(combination, "BLOCK_ELEMENTS", 1 << 30)
    torch.testing.assert_close(_reference(method, inputs), runs[0])


def test_torch_passes_match_float64() -> None:
    g = torch.Generator().manual_seed(8)
    base = torch.randn(6, 500, generator=g)
    inputs = [base.to(torch.bfloat16)] + [
        (base + 0.05 * torch.randn(6, 500, generator=g)).to(torch.bfloat16) for _ in range(2)
    ]
    mix = combination.differences(3, [(1, 0), (2, 0)])
    x = torch.stack([t.reshape(6, -1).double() for t in inputs])
    v = torch.einsum("kn,nrl->rkl", mix, x)  # exact: differences of bf16 values
    ref = v @ v.transpose(1, 2)
    diag = ref.diagonal(dim1=1, dim2=2)
    scale = (diag.unsqueeze(-1) * diag.unsqueeze(-2)).sqrt()
    assert torch.all((combination.TORCH.gram(inputs, mix, 6) - ref).abs() <= 1e-5 * scale)
    coeffs = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    terms = coeffs.reshape(3, 1) * torch.stack([t.double().reshape(-1) for t in inputs])
    out = combination.TORCH.combine(inputs, coeffs, torch.float32)
    assert torch.all(
        (out.reshape(-1).double() - terms.sum(0)).abs() <= 9 * 2.0**-24 * terms.abs().sum(0)
    )
    assert torch.equal(
        combination.TORCH.combine(inputs, coeffs, torch.bfloat16), out.to(torch.bfloat16)
    )


def test_torch_passes_take_non_contiguous_and_float64_inputs() -> None:
    y = torch.randn(12, 10).T
    g = combination.TORCH.gram([y, y])
    torch.testing.assert_close(
        g, torch.full((1, 2, 2), float((y.double() ** 2).sum()), dtype=torch.float64)
    )
    x = torch.randn(10, 12, dtype=torch.float64)
    out = combination.TORCH.combine(
        [x, y.double()], torch.tensor([0.5, 2.0], dtype=torch.float64), torch.float64
    )
    assert out.dtype == torch.float64 and torch.equal(out, 0.5 * x + 2.0 * y.double())
