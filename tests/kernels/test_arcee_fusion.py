"""arcee_fusion's fast path (:mod:`meldkit.kernels.arcee_fusion`).

Its KL is computed in float64 from float32 exponentials; it agrees with the reference's float64
softmaxes to about 1e-6 relative (pinned below), which can move an element across the
threshold, so the fast path is checked bit for bit against the whole-tensor formula given the
kernel's own KL. The sample (rows and columns drawn from the seeded streams) and the quartiles
(an exact order-statistics selection) are the reference's exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meldkit.kernels import arcee_fusion as fast_arcee
from meldkit.kernels import runner
from meldkit.methods import MergeContext, arcee_fusion, get_method, load_merge_function, sparsify
from tests.kernels.helpers import set_threads
from tests.methods.helpers import arcee_formula, run_method

module = runner.load("arcee_fusion_numba")
pytestmark = pytest.mark.skipif(module is None, reason="numba not installed")

NAME = "model.layers.0.mlp.up_proj.weight"


def _pair(
    shape: tuple[int, ...], dtype: torch.dtype, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g).to(dtype)
    other = (base.float() + 0.01 * torch.randn(shape, generator=g)).to(dtype)
    return base, other


def _kernel_kl(base: torch.Tensor, other: torch.Tensor) -> np.ndarray:
    """Each row's KL from the kernel (no sample), float64."""
    length = base.shape[-1] if base.dim() > 1 else base.numel()
    rows = base.numel() // length
    kl = np.empty(rows)
    module.row_kl(
        *runner.stored_arrays([other, base]),
        0,
        rows,
        length,
        arcee_fusion.KL_EPS,
        kl,
        np.zeros(rows + 1, dtype=np.int64),
        np.uint64(0),
        np.uint64(0),
        False,
        np.empty(0, dtype=np.float32),
    )
    return kl


@pytest.mark.parametrize("shape", [(1100, 1000), (300, 170), (5000,)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("out_dtype", [None, "BF16"])
def test_fast_equals_the_whole_tensor_formula(
    shape: tuple[int, ...], dtype: torch.dtype, out_dtype: str | None
) -> None:
    base, other = _pair(shape, dtype, seed=2)
    ctx = MergeContext(NAME, 3, "cpu", out_dtype)
    assert fast_arcee.arcee_fusion.supports([base, other], 0, {}, [{}, {}], ctx)
    got = fast_arcee.arcee_fusion.merge([base, other], 0, {}, [{}, {}], ctx)
    kl = torch.from_numpy(_kernel_kl(base, other)).to(torch.float32).reshape(-1, 1)
    expected = arcee_formula(base, other, ctx, kl)
    assert got.dtype == (torch.bfloat16 if out_dtype == "BF16" else torch.float32)
    assert torch.equal(got, expected.to(got.dtype))
    kept = int((got.float() != base.to(got.dtype).float()).sum())
    assert 0 < kept < base.numel()  # the threshold splits the tensor: the comparison is not vacuous
    # The dispatcher picks this path for these inputs.
    assert torch.equal(
        load_merge_function(get_method("arcee_fusion"))([base, other], 0, {}, [{}, {}], ctx), got
    )


def test_empty_float64_and_other_devices_take_the_reference() -> None:
    ctx = MergeContext("w", 0, "cpu")
    empty = [torch.zeros(0, 4), torch.zeros(0, 4)]
    assert not fast_arcee.arcee_fusion.supports(empty, 0, {}, [{}, {}], ctx)
    f64 = [x.double() for x in _pair((30, 20), torch.float32, seed=1)]
    assert not fast_arcee.arcee_fusion.supports(f64, 0, {}, [{}, {}], ctx)
    f32 = list(_pair((30, 20), torch.float32, seed=1))
    assert fast_arcee.arcee_fusion.supports(f32, 0, {}, [{}, {}], ctx)
    assert not fast_arcee.arcee_fusion.supports(f32, 0, {}, [{}, {}], MergeContext("w", 0, "cuda"))
    fn = load_merge_function(get_method("arcee_fusion"))
    assert fn(empty, 0, {}, [{}, {}], ctx).shape == (0, 4)
    out = fn(f64, 0, {}, [{}, {}], ctx)
    assert out.dtype == torch.float64
    assert torch.equal(out, arcee_fusion.arcee_fusion(f64, 0, {}, [{}, {}], ctx))


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 999_999])
def test_kernel_quartiles_equal_torch_quantile(n: int) -> None:
    g = torch.Generator().manual_seed(n)
    levels = torch.tensor([0.25, 0.5, 0.75])
    signed_zeros = torch.randint(0, 2, (n,), generator=g).float() * -0.0  # -0.0 and 0.0
    for sample in (
        torch.randn(n, generator=g),
        torch.randint(0, 4, (n,), generator=g).float(),
        torch.randint(-3, 3, (n,), generator=g).float() * 1e-30,
        signed_zeros,
    ):
        got = fast_arcee.quartiles(sample)
        assert torch.equal(got, torch.quantile(sample, levels))
        assert torch.equal(got, arcee_fusion.quartiles(sample))
    with_nan = torch.randn(n + 1, generator=g)
    with_nan[0] = float("nan")
    assert torch.isnan(fast_arcee.quartiles(with_nan)).all()


# The kernel's KL against torch's float64 softmaxes, relative. Measured maximum on the cases
# of test_kl_kernel_matches_float64: 6.6e-6.
KL_RTOL = 2e-5


@pytest.mark.parametrize("scale", [1e-3, 0.1, 3.0])
def test_kl_kernel_matches_float64(scale: float) -> None:
    # Rows of a fine-tune near its base (the ill-conditioned case), far from it, and with a
    # wide spread of logits; 1-element and odd-length rows.
    g = torch.Generator().manual_seed(4)
    for shape in [(64, 1536), (7, 1), (9, 333)]:
        base = (torch.randn(shape, generator=g) * scale * 10).to(torch.bfloat16)
        other = (base.float() + scale * torch.randn(shape, generator=g)).to(torch.bfloat16)
        got = _kernel_kl(base, other)
        x, b = other.double(), base.double()
        p, q = torch.softmax(x, -1) + 1e-8, torch.softmax(b, -1) + 1e-8
        expected = (p * (p / q).log()).sum(-1).numpy()
        np.testing.assert_allclose(got, expected, rtol=KL_RTOL, atol=1e-15)
        reference = arcee_fusion.row_kl(other, base).reshape(-1).numpy()
        np.testing.assert_allclose(got, reference, rtol=KL_RTOL, atol=1e-15)


def test_exp_and_log_polynomials() -> None:
    from numba import njit

    exp32, log64 = module._exp32, module._log64

    @njit
    def both(t, v, e_out, l_out):  # type: ignore[no-untyped-def]
        for i in range(t.shape[0]):
            e_out[i] = exp32(t[i])
            l_out[i] = log64(v[i])

    rng = np.random.default_rng(0)
    t = np.concatenate(
        [-rng.random(100_000) * 87, -rng.random(10_000) * 1e-3, [0.0, -87.0]]
    ).astype(np.float32)
    v = np.concatenate(
        [np.exp(rng.uniform(-700, 700, 100_000)), 1 + rng.uniform(-1e-6, 1e-6, 10_000), [1.0, 2.0]]
    )[: t.size]
    e_out, l_out = np.empty_like(t), np.empty_like(v)
    both(t, v, e_out, l_out)
    exact_e = np.exp(t.astype(np.float64))
    assert np.max(np.abs(e_out - exact_e) / np.spacing(exact_e.astype(np.float32))) <= 2
    exact_l = np.log(v)
    ulps = np.abs(l_out - exact_l) / np.spacing(np.maximum(np.abs(exact_l), 1e-300))
    assert np.max(ulps[exact_l != 0]) <= 4 and l_out[-2] == 0.0


@pytest.mark.parametrize("parts", [1, 2, 3])
def test_sample_rows_counted_by_the_kernel_equal_torch(
    parts: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The kernel counts the rows' draws in parallel ranges; the counts must not depend on them.
    set_threads(monkeypatch, parts)
    key = MergeContext("w", parts).stream_key("arcee_fusion/rows")
    got = fast_arcee.sample_starts(key, 37, 5000)
    picked = (sparsify.hash32(key, 0, 5000) * 37) >> 32
    assert np.array_equal(
        got, np.concatenate([[0], np.cumsum(np.bincount(picked.numpy(), minlength=37))])
    )
    assert np.array_equal(got, arcee_fusion.sample_starts(key, 37, 5000))


def test_kernel_sample_equals_the_reference_gather() -> None:
    base, other = _pair((1100, 1000), torch.bfloat16, seed=6)  # sampled: 1.1M elements
    keys = (5, 6)
    rows, length = base.shape
    size = arcee_fusion.SAMPLE_SIZE
    starts = fast_arcee.sample_starts(keys[0], rows, size)
    kl = np.empty(rows)
    sample = np.empty(size, dtype=np.float32)
    module.row_kl(
        *runner.stored_arrays([other, base]),
        0,
        rows,
        length,
        arcee_fusion.KL_EPS,
        kl,
        starts,
        *runner.key_halves(keys[1]),
        False,
        sample,
    )
    kl_t, eager = arcee_fusion.kl_and_sample(base, other, torch.float32, keys)
    # Same positions in the same order; the values differ only by the KLs' last digits.
    assert eager.shape == (size,)
    torch.testing.assert_close(torch.from_numpy(kl).float().reshape(-1, 1), kl_t, rtol=1e-5, atol=0)
    torch.testing.assert_close(torch.from_numpy(sample), eager, rtol=1e-5, atol=0)
    # Exactly those positions: the importance from the kernel's KL at sample_index.
    index = arcee_fusion.sample_index(keys, rows, length, size)
    kl32 = torch.from_numpy(kl).float()
    expected = (other.float().reshape(-1)[index] - base.float().reshape(-1)[index]).abs() * kl32[
        index // length
    ]
    assert torch.equal(torch.from_numpy(sample), expected)


def test_thread_count_does_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    base, other = _pair((1100, 1000), torch.bfloat16, seed=5)  # sampled: 1.1M elements
    results = []
    for threads in (1, 2, 3):
        set_threads(monkeypatch, threads)
        results.append(run_method("arcee_fusion", [base, other], 0, seed=3))
    assert all(torch.equal(results[0], r) for r in results[1:])
