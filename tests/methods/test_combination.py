"""The blocked Gram and combination passes (meldkit.methods.combination) and the methods on them."""

from __future__ import annotations

import pytest
import torch

from meldkit.methods import combination
from tests.methods.helpers import run_method


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
    rows = combination.combine([a.reshape(2, 5), b.reshape(2, 5)],
                               torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64), torch.float32)
    assert torch.equal(rows, torch.stack([a[:5], torch.ones(5)]))


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
            runs.append(run_method(method, inputs, 0, per_input={"weight": 1.0}))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(runs[0], runs[1])
    # Whole-tensor blocks give the same result up to float rounding.
    monkeypatch.setattr(combination, "BLOCK_ELEMENTS", 1 << 30)
    torch.testing.assert_close(run_method(method, inputs, 0, per_input={"weight": 1.0}), runs[0])
