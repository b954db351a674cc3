"""sce and ramplus_tl compute whole-tensor statistics in blocked passes: the block size must
not matter (ties at sce's top-k cut-off are resolved in flat order across blocks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meldkit.methods import (
    MergeContext,
    arcee_fusion,
    kernel_runner,
    ram,
    ramplus_tl,
    sce,
    sparsify,
)
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
    monkeypatch.setattr(ram, "fused_kernels", lambda *a: None)  # the blocked eager passes
    blocked = run_method("ramplus_tl", inputs, 0, {"epsilon": 0.1, "r": 0.5, "alpha": 0.9})
    assert torch.equal(whole, blocked)


@pytest.mark.parametrize("shape", [(1100, 1000), (300, 170), (5000,)])
def test_arcee_fusion_block_size_does_not_matter(shape: tuple[int, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(1)
    base = torch.randn(shape, generator=g)
    other = base + 0.01 * torch.randn(shape, generator=g)  # (1100, 1000): the sampled path
    whole = run_method("arcee_fusion", [base, other], 0, seed=3)
    monkeypatch.setattr(arcee_fusion, "BLOCK_ELEMENTS", 50_000)
    assert torch.equal(run_method("arcee_fusion", [base, other], 0, seed=3), whole)


@pytest.mark.parametrize("shape", [(1100, 1000), (300, 170), (5000,)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("out_dtype", [None, "BF16"])
@pytest.mark.parametrize("kernels", [True, False])
def test_arcee_fusion_equals_the_whole_tensor_formula(shape: tuple[int, ...], dtype: torch.dtype,
                                                      out_dtype: str | None, kernels: bool,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    if kernels and kernel_runner.load("kernels_pair") is None:
        pytest.skip("numba not installed")
    if not kernels:
        monkeypatch.setattr(kernel_runner, "load", lambda name: None)
    g = torch.Generator().manual_seed(2)
    base = torch.randn(shape, generator=g).to(dtype)
    other = (base.float() + 0.01 * torch.randn(shape, generator=g)).to(dtype)
    ctx = MergeContext("model.layers.0.mlp.up_proj.weight", 3, "cpu", out_dtype)
    got = arcee_fusion.merge([base, other], 0, {}, [{}, {}], ctx)

    # The formula on whole float32 tensors, with the same with-replacement sample and the
    # same per-row KL (the kernel's agrees with torch's float64 one to about 1e-6 relative;
    # test_arcee_kl_kernel_matches_float64 checks that).
    b, x = base.float(), other.float()
    rows = b.numel() // shape[-1]
    stored = kernel_runner.stored_arrays([base, other]) if kernels else None
    kl, _ = arcee_fusion.kl_and_sample(b.reshape(rows, -1), x.reshape(rows, -1), torch.float32, None, stored)
    imp = ((x - b).abs().reshape(rows, -1) * kl).reshape(-1)
    n = imp.numel()
    if n > arcee_fusion.SAMPLE_SIZE:
        # Each draw's row, then (rows in order) each draw's column: multiply-shift of the
        # seeded hash streams into [0, rows) and [0, length).
        size, length = arcee_fusion.SAMPLE_SIZE, shape[-1]
        row_draws = (sparsify.hash32(ctx.stream_key("arcee_fusion/rows"), 0, size) * rows) >> 32
        columns = (sparsify.hash32(ctx.stream_key("arcee_fusion/columns"), 0, size) * length) >> 32
        sample = imp[row_draws.sort().values * length + columns]
    else:
        sample = imp
    q1, median, q3 = torch.quantile(sample, torch.tensor([0.25, 0.5, 0.75]))
    expected = b + (x - b) * (imp.reshape(shape) >= median + 1.5 * (q3 - q1))
    assert got.dtype == (torch.bfloat16 if out_dtype == "BF16" else torch.float32)
    assert torch.equal(got, expected.to(got.dtype))
    kept = int(((got.float() != b.to(got.dtype).float())).sum())
    assert 0 < kept < n  # the threshold splits the tensor: the comparison is not vacuous


def test_arcee_fusion_empty_tensor() -> None:
    out = arcee_fusion.merge([torch.zeros(0, 4), torch.zeros(0, 4)], 0, {}, [{}, {}], MergeContext("w", 0))
    assert out.shape == (0, 4)


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 999_999])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_arcee_quartiles_equal_torch_quantile(n: int, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(n)
    levels = torch.tensor([0.25, 0.5, 0.75], dtype=dtype)
    signed_zeros = torch.randint(0, 2, (n,), generator=g).to(dtype) * -0.0  # -0.0 and 0.0
    for sample in (torch.randn(n, generator=g, dtype=dtype), torch.randint(0, 4, (n,), generator=g).to(dtype),
                   torch.randint(-3, 3, (n,), generator=g).to(dtype) * 1e-30, signed_zeros):
        assert torch.equal(arcee_fusion.quartiles(sample), torch.quantile(sample, levels))
    with_nan = torch.randn(n + 1, generator=g, dtype=dtype)
    with_nan[0] = float("nan")
    assert torch.isnan(arcee_fusion.quartiles(with_nan)).all()


@pytest.mark.parametrize("scale", [1e-3, 0.1, 3.0])
def test_arcee_kl_kernel_matches_float64(scale: float) -> None:
    # Rows of a fine-tune near its base (the ill-conditioned case), far from it, and with a
    # wide spread of logits; 1-element and odd-length rows.
    module = kernel_runner.load("kernels_pair")
    if module is None:
        pytest.skip("numba not installed")
    g = torch.Generator().manual_seed(4)
    for shape in [(64, 1536), (7, 1), (9, 333)]:
        base = (torch.randn(shape, generator=g) * scale * 10).to(torch.bfloat16)
        other = (base.float() + scale * torch.randn(shape, generator=g)).to(torch.bfloat16)
        got = np.empty(shape[0])
        module.row_kl(*kernel_runner.stored_arrays([other, base]), 0, shape[0], shape[1], arcee_fusion.KL_EPS, got,
                      np.zeros(shape[0] + 1, dtype=np.int64), np.uint64(0), np.uint64(0), False,
                      np.empty(0, dtype=np.float32))
        x, b = other.double(), base.double()
        p, q = torch.softmax(x, -1) + 1e-8, torch.softmax(b, -1) + 1e-8
        expected = (p * (p / q).log()).sum(-1).numpy()
        np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-15)


def test_arcee_exp_and_log_polynomials() -> None:
    from numba import njit

    module = kernel_runner.load("kernels_pair")
    if module is None:
        pytest.skip("numba not installed")
    exp32, log64 = module._exp32, module._log64

    @njit
    def both(t, v, e_out, l_out):  # type: ignore[no-untyped-def]
        for i in range(t.shape[0]):
            e_out[i] = exp32(t[i])
            l_out[i] = log64(v[i])

    rng = np.random.default_rng(0)
    t = np.concatenate([-rng.random(100_000) * 87, -rng.random(10_000) * 1e-3, [0.0, -87.0]]).astype(np.float32)
    v = np.concatenate([np.exp(rng.uniform(-700, 700, 100_000)), 1 + rng.uniform(-1e-6, 1e-6, 10_000), [1.0, 2.0]])[: t.size]
    e_out, l_out = np.empty_like(t), np.empty_like(v)
    both(t, v, e_out, l_out)
    exact_e = np.exp(t.astype(np.float64))
    assert np.max(np.abs(e_out - exact_e) / np.spacing(exact_e.astype(np.float32))) <= 2
    exact_l = np.log(v)
    ulps = np.abs(l_out - exact_l) / np.spacing(np.maximum(np.abs(exact_l), 1e-300))
    assert np.max(ulps[exact_l != 0]) <= 4 and l_out[-2] == 0.0


@pytest.mark.parametrize("parts", [1, 2, 3])
def test_arcee_sample_rows_counted_by_the_kernel_equal_torch(parts: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # The kernel counts the rows' draws in parallel ranges; the counts must not depend on them.
    module = kernel_runner.load("kernels_pair")
    if module is None:
        pytest.skip("numba not installed")
    monkeypatch.setattr(kernel_runner.torch, "get_num_threads", lambda: parts)
    key = MergeContext("w", parts).stream_key("arcee_fusion/rows")
    got = arcee_fusion.sample_starts(key, 37, 5000, module)
    picked = (sparsify.hash32(key, 0, 5000) * 37) >> 32
    assert np.array_equal(got, np.concatenate([[0], np.cumsum(np.bincount(picked.numpy(), minlength=37))]))
    assert np.array_equal(got, arcee_fusion.sample_starts(key, 37, 5000))


def test_arcee_sample_positions_are_uniform() -> None:
    rows, length, size = 7, 13, 200_000
    index = arcee_fusion.sample_index((11, 12), rows, length, size)
    assert index.shape == (size,) and bool(((index // length).diff() >= 0).all())  # row order
    counts = torch.bincount(index, minlength=rows * length)
    mean = size / (rows * length)  # 2198 draws per position; one standard deviation is 47
    assert counts.numel() == rows * length and int((counts - mean).abs().max()) < 6 * mean**0.5


def test_arcee_kernel_sample_equals_the_eager_gather() -> None:
    module = kernel_runner.load("kernels_pair")
    if module is None:
        pytest.skip("numba not installed")
    g = torch.Generator().manual_seed(6)
    base = torch.randn(1100, 1000, generator=g).to(torch.bfloat16)  # sampled: 1.1M elements
    other = (base.float() + 0.01 * torch.randn(1100, 1000, generator=g)).to(torch.bfloat16)
    keys = (5, 6)
    kl_k, fused = arcee_fusion.kl_and_sample(base, other, torch.float32, keys,
                                             kernel_runner.stored_arrays([base, other]))
    kl_t, eager = arcee_fusion.kl_and_sample(base, other, torch.float32, keys)
    # Same positions in the same order; the values differ only by the KLs' last digits.
    assert fused.shape == eager.shape == (arcee_fusion.SAMPLE_SIZE,)
    torch.testing.assert_close(kl_k, kl_t, rtol=1e-5, atol=0)
    torch.testing.assert_close(fused, eager, rtol=1e-5, atol=0)


def test_arcee_fusion_thread_count_does_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(5)
    base = torch.randn(1100, 1000, generator=g).to(torch.bfloat16)  # sampled: 1.1M elements
    other = (base.float() + 0.01 * torch.randn(1100, 1000, generator=g)).to(torch.bfloat16)
    results = []
    for threads in (1, 2, 3):
        monkeypatch.setattr(kernel_runner.torch, "get_num_threads", lambda t=threads: t)
        results.append(run_method("arcee_fusion", [base, other], 0, seed=3))
    assert all(torch.equal(results[0], r) for r in results[1:])
