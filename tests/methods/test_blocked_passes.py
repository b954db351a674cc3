"""sce and ramplus_tl compute whole-tensor statistics in blocked passes: the block size must
not matter (ties at sce's top-k cut-off are resolved in flat order across blocks)."""

from __future__ import annotations

import pytest
import torch

from meldkit.methods import ramplus_tl, sce
from tests.methods.helpers import run_method


def _inputs(dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(300, 170, generator=g)
    # Deltas on a grid of 1/8: many equal variances, so the cut-off has ties across blocks.
    return [base.to(dtype)] + [(base + torch.randint(-4, 5, (300, 170), generator=g).float() / 8).to(dtype)
                               for _ in range(3)]


@pytest.mark.parametrize("topk", [0.0, 0.3, 0.77, 1.0])
def test_sce_block_size_does_not_matter(topk: float, monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = _inputs()
    whole = run_method("sce", inputs, 0, {"select_topk": topk})
    monkeypatch.setattr(sce, "BLOCK_ELEMENTS", 1000)  # 52 blocks
    blocked = run_method("sce", inputs, 0, {"select_topk": topk})
    # The same elements move (selection and election are exact); energies are float64 sums
    # over other blocks, so the weights may differ in the last bit.
    assert torch.equal(whole != inputs[0], blocked != inputs[0])
    torch.testing.assert_close(blocked, whole, rtol=1e-6, atol=1e-6)


def test_sce_keeps_exactly_k_positions_with_ties(monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = _inputs()
    deltas = [x - inputs[0] for x in inputs[1:]]
    var = sce._variance(deltas)
    k = int(int(torch.count_nonzero(var)) * 0.3)
    monkeypatch.setattr(sce, "BLOCK_ELEMENTS", 1000)
    out = run_method("sce", inputs, 0, {"select_topk": 0.3})
    moved = out != inputs[0]
    assert int(moved.sum()) <= k
    # Every position with a variance above the cut-off's is kept.
    cut = var.reshape(-1).kthvalue(var.numel() - k).values
    assert bool(moved[var > cut].all())


def test_ramplus_tl_block_size_does_not_matter(monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = _inputs(torch.bfloat16)
    whole = run_method("ramplus_tl", inputs, 0, {"epsilon": 0.1, "r": 0.5, "alpha": 0.9})
    monkeypatch.setattr(ramplus_tl, "BLOCK_ELEMENTS", 999)
    blocked = run_method("ramplus_tl", inputs, 0, {"epsilon": 0.1, "r": 0.5, "alpha": 0.9})
    assert torch.equal(whole, blocked)


@pytest.mark.parametrize("shape", [(1100, 1000), (300, 170), (5000,)])
def test_arcee_fusion_block_size_does_not_matter(shape: tuple[int, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    from meldkit.methods import arcee_fusion

    g = torch.Generator().manual_seed(1)
    base = torch.randn(shape, generator=g)
    other = base + 0.01 * torch.randn(shape, generator=g)  # (1100, 1000): the sampled path
    whole = run_method("arcee_fusion", [base, other], 0, seed=3)
    monkeypatch.setattr(arcee_fusion, "BLOCK_ELEMENTS", 50_000)
    assert torch.equal(run_method("arcee_fusion", [base, other], 0, seed=3), whole)
