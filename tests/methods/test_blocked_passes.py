"""The references that compute whole-tensor statistics in blocked passes (ramplus_tl's overlap
counts, arcee_fusion's KL and sample): the block size must not matter. And sce's selection:
exactly the top-k positions by variance, ties at the cut-off dropped in flat order.

All of these call the reference functions directly (the fast paths: tests/kernels/)."""

from __future__ import annotations

import pytest
import torch

from meldkit.methods import MergeContext, arcee_fusion, get_method, ramplus_tl, sce
from tests.methods.helpers import arcee_formula, reference_function, resolve_params


def _inputs(dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(300, 170, generator=g)
    # Deltas on a grid of 1/8: many equal variances, so the cut-off has ties across blocks.
    return [base.to(dtype)] + [
        (base + torch.randint(-4, 5, (300, 170), generator=g).float() / 8).to(dtype)
        for _ in range(3)
    ]


def _reference(
    name: str,
    inputs: list[torch.Tensor],
    base_index: int | None = 0,
    shared: dict[str, object] | None = None,
    ctx: MergeContext | None = None,
) -> torch.Tensor:
    spec = get_method(name)
    shared_v, per_v = resolve_params(spec, len(inputs), base_index, shared)
    ctx = ctx or MergeContext("model.layers.0.mlp.up_proj.weight", 3)
    return reference_function(name)(list(inputs), base_index, shared_v, per_v, ctx)


@pytest.mark.parametrize("topk", [0.3, 0.77])
def test_sce_keeps_exactly_k_positions_with_ties(topk: float) -> None:
    inputs = _inputs()
    deltas = [x - inputs[0] for x in inputs[1:]]
    var = sce.variance(deltas)
    k = int(int(torch.count_nonzero(var)) * topk)
    selected = [d.clone() for d in deltas]
    sce.select(selected, topk)
    kept = torch.stack([d != 0 for d in selected]).any(0)
    cut = var.reshape(-1).kthvalue(var.numel() - k).values
    assert bool(kept[var > cut].all())  # every position above the cut-off's variance
    tied = (var == cut).reshape(-1).nonzero().reshape(-1)
    n_tied_kept = k - int((var > cut).sum())
    assert 0 < n_tied_kept < tied.numel()  # the cut-off falls inside a run of ties
    # Ties at the cut-off: the first ones in flat order are dropped, the last ones kept.
    assert bool(kept.reshape(-1)[tied[tied.numel() - n_tied_kept :]].all())
    assert not bool(kept.reshape(-1)[tied[: tied.numel() - n_tied_kept]].any())
    out = _reference("sce", inputs, 0, {"select_topk": topk})
    moved = out != inputs[0]
    assert int(moved.sum()) <= k and not bool(moved[~kept].any())


def test_sce_energy_weights_are_plain_float64_sums() -> None:
    g = torch.Generator().manual_seed(1)
    deltas = [torch.randn(5000, generator=g) * s for s in (1.0, 0.5, 2.0)]
    energies = torch.tensor(
        [float((d.double() ** 2).sum()) / 5000 for d in deltas], dtype=torch.float32
    )
    assert torch.equal(sce.energy_weights(deltas, torch.float32), energies / float(energies.sum()))
    tiny = [torch.full((10,), 1e-5), torch.zeros(10)]
    assert torch.equal(sce.energy_weights(tiny, torch.float32), torch.full((2,), 0.5))


def test_ramplus_tl_block_size_does_not_matter(monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = _inputs(torch.bfloat16)
    shared = {"epsilon": 0.1, "r": 0.5, "alpha": 0.9}
    whole = _reference("ramplus_tl", inputs, 0, shared)
    monkeypatch.setattr(ramplus_tl, "BLOCK_ELEMENTS", 999)
    assert torch.equal(_reference("ramplus_tl", inputs, 0, shared), whole)


@pytest.mark.parametrize("shape", [(1100, 1000), (300, 170), (5000,)])
def test_arcee_fusion_block_size_does_not_matter(
    shape: tuple[int, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    g = torch.Generator().manual_seed(1)
    base = torch.randn(shape, generator=g)
    other = base + 0.01 * torch.randn(shape, generator=g)  # (1100, 1000): the sampled path
    whole = _reference("arcee_fusion", [base, other])
    monkeypatch.setattr(arcee_fusion, "BLOCK_ELEMENTS", 50_000)
    assert torch.equal(_reference("arcee_fusion", [base, other]), whole)


@pytest.mark.parametrize("shape", [(1100, 1000), (300, 170), (5000,)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("out_dtype", [None, "BF16"])
def test_arcee_fusion_equals_the_whole_tensor_formula(
    shape: tuple[int, ...], dtype: torch.dtype, out_dtype: str | None
) -> None:
    g = torch.Generator().manual_seed(2)
    base = torch.randn(shape, generator=g).to(dtype)
    other = (base.float() + 0.01 * torch.randn(shape, generator=g)).to(dtype)
    ctx = MergeContext("model.layers.0.mlp.up_proj.weight", 3, "cpu", out_dtype)
    got = arcee_fusion.arcee_fusion([base, other], 0, {}, [{}, {}], ctx)
    # The formula on whole float32 tensors, with the same with-replacement sample and the
    # reference's per-row float64 KL in float32.
    b, x = base.float(), other.float()
    rows = b.numel() // shape[-1]
    kl = arcee_fusion.row_kl(x.reshape(rows, -1), b.reshape(rows, -1)).to(torch.float32)
    expected = arcee_formula(base, other, ctx, kl)
    assert got.dtype == (torch.bfloat16 if out_dtype == "BF16" else torch.float32)
    assert torch.equal(got, expected.to(got.dtype))
    kept = int((got.float() != b.to(got.dtype).float()).sum())
    assert 0 < kept < b.numel()  # the threshold splits the tensor: the comparison is not vacuous


def test_arcee_fusion_empty_tensor() -> None:
    out = arcee_fusion.arcee_fusion(
        [torch.zeros(0, 4), torch.zeros(0, 4)], 0, {}, [{}, {}], MergeContext("w", 0)
    )
    assert out.shape == (0, 4)


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 999_999])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_arcee_quartiles_equal_torch_quantile(n: int, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(n)
    levels = torch.tensor([0.25, 0.5, 0.75], dtype=dtype)
    signed_zeros = torch.randint(0, 2, (n,), generator=g).to(dtype) * -0.0  # -0.0 and 0.0
    for sample in (
        torch.randn(n, generator=g, dtype=dtype),
        torch.randint(0, 4, (n,), generator=g).to(dtype),
        torch.randint(-3, 3, (n,), generator=g).to(dtype) * 1e-30,
        signed_zeros,
    ):
        assert torch.equal(arcee_fusion.quartiles(sample), torch.quantile(sample, levels))
    with_nan = torch.randn(n + 1, generator=g, dtype=dtype)
    with_nan[0] = float("nan")
    assert torch.isnan(arcee_fusion.quartiles(with_nan)).all()


def test_arcee_sample_starts_count_the_row_draws() -> None:
    key = MergeContext("w", 2).stream_key("arcee_fusion/rows")
    got = arcee_fusion.sample_starts(key, 37, 5000)
    picked = (arcee_fusion.scaled_draws(key, 5000, 37)).numpy()
    assert got[0] == 0 and got[-1] == 5000 and len(got) == 38
    assert all(int((picked == r).sum()) == got[r + 1] - got[r] for r in range(37))


def test_arcee_sample_positions_are_uniform() -> None:
    rows, length, size = 7, 13, 200_000
    index = arcee_fusion.sample_index((11, 12), rows, length, size)
    assert index.shape == (size,) and bool(((index // length).diff() >= 0).all())  # row order
    counts = torch.bincount(index, minlength=rows * length)
    mean = size / (rows * length)  # 2198 draws per position; one standard deviation is 47
    assert counts.numel() == rows * length and int((counts - mean).abs().max()) < 6 * mean**0.5
