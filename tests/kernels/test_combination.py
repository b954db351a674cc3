"""The numba passes of the linear-combination methods (:data:`meldkit.kernels.combination.NUMBA`)
against float64 references and against the torch passes (:data:`meldkit.methods.combination.TORCH`).

The Gram kernel forms ``v = A x`` in float32 (for difference rows exactly the torch pass's
``x_i - x_j``) and sums exact float64 products, so it is compared with a float64 reference
built from the same float32 ``v`` at a tight relative tolerance, and with an all-float64
reference at ~1e-6. The torch pass sums float32 products per block, so the two Gram passes
agree to the pinned GRAM_RTOL and the methods' outputs to OUTPUT_RTOL. The combination kernel
computes ``Σ c_i x_i`` in float32 in input order: bit for bit that float32 expression, and for
bfloat16 output the float32 value rounded to nearest even.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from meldkit.kernels import combination as fast_comb
from meldkit.kernels import runner
from meldkit.methods import MergeContext, combination, get_method, load_merge_function
from tests.kernels.helpers import both, fast_path, set_threads
from tests.methods.helpers import reference_function, resolve_params, run_method

pytestmark = pytest.mark.skipif(
    runner.load("combination_numba") is None, reason="numba not installed"
)

NUMBA, TORCH = fast_comb.NUMBA, combination.TORCH
DTYPES = [torch.bfloat16, torch.float32, torch.float16]

# The Gram matrices of the numba and the torch passes: |G_numba - G_torch| <= GRAM_RTOL ·
# sqrt(G_kk G_ll) (the Cauchy-Schwarz bound of |G_kl|). The torch pass's float32 block
# products set it; measured maximum on the cases of test_gram_passes_agree: 1.44e-5 (float16
# inputs, rows of 150001), 6.7e-6 for bfloat16, 1.8e-6 for float32.
GRAM_RTOL = 2.5e-5
# The methods' outputs, fast path against reference: |fast - reference| <= OUTPUT_RTOL ·
# max|reference|, on the cases of test_methods_agree_with_the_reference. Measured maximum:
# 1.73e-6 (karcher, an iterative mean), 9.3e-7 (slerp), <= 1.7e-7 for the others.
OUTPUT_RTOL = 3e-6


def _inputs(
    shape: tuple[int, ...], n: int, dtype: torch.dtype, seed: int = 0, spread: float = 0.05
) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    return [base.to(dtype)] + [
        (base + spread * torch.randn(shape, generator=g)).to(dtype) for _ in range(n - 1)
    ]


def _reference_gram(
    inputs: list[torch.Tensor], mix: torch.Tensor, rows: int, exact_v: bool
) -> torch.Tensor:
    """Per row, ``V Vᵀ`` in float64; ``V`` computed in float32 as the kernels do (the
    differences of the mix rows), or in float64 when ``exact_v``."""
    x = torch.stack([t.reshape(rows, -1).double() for t in inputs])  # (N, rows, L)
    v = torch.einsum("kn,nrl->rkl", mix, x)
    if not exact_v:
        x32 = torch.stack([t.reshape(rows, -1).float() for t in inputs])
        v = torch.einsum("kn,nrl->rkl", mix.float(), x32).double()
    return v @ v.transpose(1, 2)


def _gram_error(g: torch.Tensor, ref: torch.Tensor) -> float:
    """``max |g - ref| / sqrt(ref_kk ref_ll)``."""
    assert g.dtype == torch.float64 and g.shape == ref.shape
    diag = ref.diagonal(dim1=1, dim2=2).clamp_min(0)
    scale = (diag.unsqueeze(-1) * diag.unsqueeze(-2)).sqrt()  # |G_kl| <= sqrt(G_kk G_ll)
    return float(((g - ref).abs() / (scale + 1e-300)).max())


def _assert_gram_close(g: torch.Tensor, ref: torch.Tensor, rel: float) -> None:
    assert _gram_error(g, ref) <= rel, _gram_error(g, ref)


def _bf16_ulp(x: torch.Tensor) -> torch.Tensor:
    _, e = torch.frexp(x)  # |x| in [2^(e-1), 2^e): bf16 spacing 2^(e-8)
    return torch.ldexp(torch.ones_like(x), (e - 8).clamp_min(-133))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 5])
def test_gram_matches_float64(dtype: torch.dtype, rows: int) -> None:
    inputs = _inputs((5, 3000), 4, dtype, seed=1)
    mix = combination.differences(4, [(1, 0), (2, 0), (3, 0)])
    assert fast_comb.supports(inputs, 0, {}, [{}] * 4, MergeContext("w"))
    g = NUMBA.gram(inputs, mix, rows)
    _assert_gram_close(g, _reference_gram(inputs, mix, rows, exact_v=False), 1e-12)
    _assert_gram_close(g, _reference_gram(inputs, mix, rows, exact_v=True), 1e-6)
    plain = NUMBA.gram(inputs, None, rows)  # mix None: the inputs themselves
    _assert_gram_close(
        plain, _reference_gram(inputs, torch.eye(4, dtype=torch.float64), rows, False), 1e-12
    )


def test_gram_general_mix_and_mixed_dtypes() -> None:
    inputs = _inputs((4000,), 3, torch.float32, seed=2)
    inputs[1] = inputs[1].to(torch.bfloat16)  # mixed dtypes: widened to float32
    mix = torch.tensor([[0.5, 0.25, -1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    g = NUMBA.gram(inputs, mix)
    _assert_gram_close(g, _reference_gram(inputs, mix, 1, exact_v=False), 1e-12)
    assert torch.all(g[0, 1] == 0) and torch.all(g[0, :, 1] == 0)


@pytest.mark.parametrize("rows,length", [(1, 3 * (1 << 16) + 123), (3, (1 << 16) + 5)])
def test_gram_many_blocks(rows: int, length: int) -> None:
    inputs = _inputs((rows, length), 3, torch.bfloat16, seed=3)
    mix = combination.differences(3, [(1, 0), (2, 0), (1, 2)])
    g = NUMBA.gram(inputs, mix, rows)
    _assert_gram_close(g, _reference_gram(inputs, mix, rows, exact_v=False), 1e-12)


def test_small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast_comb, "BLOCK_ELEMENTS", 7)  # many ragged items per row
    inputs = _inputs((4, 30), 3, torch.bfloat16, seed=4)
    mix = combination.differences(3, [(1, 0), (2, 0)])
    for rows in (1, 4):
        g = NUMBA.gram(inputs, mix, rows)
        _assert_gram_close(g, _reference_gram(inputs, mix, rows, exact_v=False), 1e-12)
        coeffs = torch.rand(
            rows, 3, generator=torch.Generator().manual_seed(rows), dtype=torch.float64
        )
        out = NUMBA.combine(inputs, coeffs, torch.float32)
        assert torch.equal(out, _combine_float32(inputs, coeffs))
        ref = (
            coeffs.T.reshape(3, rows, 1)
            * torch.stack([x.double().reshape(rows, -1) for x in inputs])
        ).sum(0)
        torch.testing.assert_close(out.double().reshape(rows, -1), ref, rtol=1e-6, atol=1e-6)


def test_tiny_and_empty() -> None:
    one = [torch.tensor([2.0], dtype=torch.bfloat16), torch.tensor([3.5])]
    assert torch.equal(
        NUMBA.gram(one), torch.tensor([[[4.0, 7.0], [7.0, 12.25]]], dtype=torch.float64)
    )
    out = NUMBA.combine(one, torch.tensor([0.5, 2.0], dtype=torch.float64), torch.bfloat16)
    assert out.dtype == torch.bfloat16 and out.tolist() == [8.0]
    empty = [torch.empty(0, dtype=torch.bfloat16), torch.empty(0, dtype=torch.bfloat16)]
    mix = combination.differences(2, [(1, 0)])
    assert torch.equal(NUMBA.gram(empty, mix), torch.zeros(1, 1, 1, dtype=torch.float64))
    out = NUMBA.combine(empty, torch.tensor([0.5, 0.5], dtype=torch.float64), torch.bfloat16)
    assert out.shape == (0,) and out.dtype == torch.bfloat16
    empty_rows = [torch.empty(3, 0), torch.empty(3, 0)]
    assert torch.equal(NUMBA.gram(empty_rows, mix, 3), torch.zeros(3, 1, 1, dtype=torch.float64))


def _combine_reference(
    inputs: list[torch.Tensor], coeffs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``Σ c x`` and ``Σ |c x|`` in float64, per row of the ``(rows, -1)`` view."""
    c = coeffs.reshape(-1, len(inputs)).T.unsqueeze(-1)  # (N, rows, 1)
    x = torch.stack([t.double().reshape(c.shape[1], -1) for t in inputs])
    return (c * x).sum(0).reshape(-1), (c * x).abs().sum(0).reshape(-1)


def _combine_float32(inputs: list[torch.Tensor], coeffs: torch.Tensor) -> torch.Tensor:
    """The kernel's expression in numpy: ``((x_0 c_0) + x_1 c_1) + ...`` in float32, each
    product and sum rounded (no fused multiply-add), per row of the ``(rows, -1)`` view."""
    rows = 1 if coeffs.dim() == 1 else coeffs.shape[0]
    c = coeffs.reshape(rows, -1).to(torch.float32).numpy()
    xs = [x.float().reshape(rows, -1).numpy() for x in inputs]
    acc = xs[0] * c[:, :1]
    for n in range(1, len(xs)):
        acc = acc + xs[n] * c[:, n : n + 1]
    return torch.from_numpy(acc).reshape(inputs[0].shape)


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
    f32 = NUMBA.combine(inputs, coeffs, torch.float32)
    assert f32.dtype == torch.float32 and f32.shape == inputs[0].shape
    assert torch.equal(f32, _combine_float32(inputs, coeffs))  # in input order, bit for bit
    assert torch.all((f32.reshape(-1).double() - ref).abs() <= rounding)
    # The torch pass computes the same float32 sum (measured: bit for bit here).
    torch_f32 = TORCH.combine(inputs, coeffs, torch.float32)
    assert torch.all(
        (torch_f32.reshape(-1).double() - f32.reshape(-1).double()).abs() <= 2 * rounding
    )
    bf16 = NUMBA.combine(inputs, coeffs, torch.bfloat16)
    assert bf16.dtype == torch.bfloat16
    assert torch.equal(bf16, f32.to(torch.bfloat16))  # rounded once, to nearest even
    assert torch.all((bf16.reshape(-1).double() - ref).abs() <= _bf16_ulp(ref) + rounding)
    f16 = NUMBA.combine(inputs, coeffs, torch.float16)  # other dtypes: float32, then cast
    assert torch.equal(f16, f32.to(torch.float16))


def test_bf16_rounding_ties_and_specials() -> None:
    bits = torch.tensor(
        [
            0x3F808000,
            0x3F818000,
            0x7F800000,
            0xFF800000,
            0x7FC00000,
            0x00000001,
            0x80000000,
            0x7F7FFFFF,
        ],
        dtype=torch.int64,
    ).to(torch.int32)
    x = bits.view(torch.float32)
    out = NUMBA.combine([x], torch.tensor([1.0], dtype=torch.float64), torch.bfloat16)
    expected = x.to(torch.bfloat16)
    assert torch.equal(out.view(torch.int16)[:4], expected.view(torch.int16)[:4])
    assert out[4].isnan()
    assert torch.equal(out[5:].float(), expected[5:].float())


def test_results_do_not_depend_on_thread_count(monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = _inputs((3, 150001), 4, torch.bfloat16, seed=7)
    mix = combination.differences(4, [(1, 0), (2, 0), (3, 0)])
    coeffs = torch.tensor(
        [[0.1, 0.3, 0.3, 0.3], [1.0, -0.5, 0.25, 0.25], [0.0, 1.0, 0.0, 0.0]], dtype=torch.float64
    )
    runs = []
    for threads in (1, 2, 3):
        set_threads(monkeypatch, threads)
        runs.append(
            (
                NUMBA.gram(inputs, mix),
                NUMBA.gram(inputs, mix, 3),
                NUMBA.combine(inputs, coeffs[1], torch.bfloat16),
                NUMBA.combine(inputs, coeffs, torch.float32),
            )
        )
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert a.dtype == b.dtype and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def test_float64_and_non_contiguous_take_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(10, 12, dtype=torch.float64)
    assert not fast_comb.supports([x, x], 0, {}, [{}, {}], MergeContext("w"))
    y = torch.randn(12, 10).T
    assert not fast_comb.supports([y, y], 0, {}, [{}, {}], MergeContext("w"))
    monkeypatch.setattr(fast_comb.NumbaPasses, "gram", lambda *a, **k: pytest.fail("numba pass"))
    for inputs in ([x, 2 * x], [y, y.flip(0)]):
        out = run_method("slerp", inputs, 0, {"t": 0.3})
        assert out.dtype == inputs[0].dtype
        shared, per = resolve_params(get_method("slerp"), 2, 0, {"t": 0.3})
        reference = reference_function("slerp")(list(inputs), 0, shared, per, MergeContext("w"))
        assert torch.equal(out, reference)


def test_without_numba_the_reference_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "load", lambda name: None)
    inputs = _inputs((6, 500), 3, torch.bfloat16, seed=8)
    assert not fast_comb.supports(inputs, 0, {}, [{}] * 3, MergeContext("w"))
    for method in ("model_stock", "multislerp", "karcher"):
        base = None if method == "karcher" else 0
        spec = get_method(method)
        shared, per = resolve_params(spec, 3, base, {}, {"weight": 1.0})
        ctx = MergeContext("w", 0)
        got = load_merge_function(spec)(list(inputs), base, shared, per, ctx)
        assert torch.equal(got, reference_function(method)(list(inputs), base, shared, per, ctx))


@pytest.mark.parametrize("shape", [(64, 300), (5, 3000), (3, 150001)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gram_passes_agree(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    worst = 0.0
    for spread in (0.05, 1.0):
        inputs = _inputs(shape, 4, dtype, seed=20, spread=spread)
        mix = combination.differences(4, [(1, 0), (2, 0), (3, 0)])
        for rows in (1, shape[0]):
            for m in (mix, None):
                worst = max(
                    worst, _gram_error(NUMBA.gram(inputs, m, rows), TORCH.gram(inputs, m, rows))
                )
    assert worst <= GRAM_RTOL, worst


CASES: list[tuple[str, dict[str, Any]]] = [
    ("model_stock", {}),
    ("model_stock", {"filter_wise": True}),
    ("nuslerp", {}),
    ("nuslerp", {"nuslerp_flatten": False}),
    ("nuslerp", {"nuslerp_flatten": False, "nuslerp_row_wise": True}),
    ("multislerp", {}),
    ("karcher", {}),
    ("slerp", {"t": 0.3}),
    ("slerp", {"t": 0.8}),
]


@pytest.mark.parametrize("method,shared", CASES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_methods_agree_with_the_reference(
    method: str, shared: dict[str, Any], dtype: torch.dtype
) -> None:
    n = {"nuslerp": 3, "slerp": 2}.get(method, 4)
    base = None if method == "karcher" else 0
    for seed, spread in [(9, 0.05), (10, 1.0)]:
        inputs = _inputs((64, 300), n, dtype, seed=seed, spread=spread)
        fast, reference = both(method, inputs, base, shared, {"weight": 1.0}, MergeContext("w", 0))
        assert fast.dtype == reference.dtype == torch.float32
        scale = float(reference.abs().max())
        assert float((fast - reference).abs().max()) <= OUTPUT_RTOL * scale


def test_slerp_writes_the_output_dtype() -> None:
    a, b = _inputs((1000,), 2, torch.bfloat16, seed=10)
    shared, per = resolve_params(get_method("slerp"), 2, 0, {"t": 0.4})
    fast = fast_path("slerp")
    f32 = fast.merge([a, b], 0, shared, per, MergeContext("x"))
    assert f32.dtype == torch.float32
    bf16 = fast.merge([a, b], 0, shared, per, MergeContext("x", out_dtype="BF16"))
    assert torch.equal(bf16, f32.to(torch.bfloat16))
    assert torch.equal(run_method("slerp", [a, b], 0, {"t": 0.4}), f32)
    dispatched = load_merge_function(get_method("slerp"))(
        [a, b], 0, shared, per, MergeContext("x", out_dtype="BF16")
    )
    assert torch.equal(dispatched, bf16)
    reference = reference_function("slerp")
    ref32 = reference([a, b], 0, shared, per, MergeContext("x"))
    ref16 = reference([a, b], 0, shared, per, MergeContext("x", out_dtype="BF16"))
    assert ref16.dtype == torch.bfloat16 and torch.equal(ref16, ref32.to(torch.bfloat16))


def test_numba_passes_run_the_reference_formula(monkeypatch: pytest.MonkeyPatch) -> None:
    # The fast path is the method's reference function with NUMBA passes: give both the same
    # Gram matrix and they combine with the same coefficients, so they agree to float32 sums.
    inputs = _inputs((64, 300), 4, torch.float32, seed=11)
    exact = NumbaWithTorchGram()
    shared, per = resolve_params(get_method("model_stock"), 4, 0, {}, {"weight": 1.0})
    ctx = MergeContext("w", 0)
    got = reference_function("model_stock")(list(inputs), 0, shared, per, ctx, passes=exact)
    want = reference_function("model_stock")(list(inputs), 0, shared, per, ctx)
    # Measured: bit for bit; the float32 combination sums may differ in the last bits.
    assert float((got - want).abs().max()) <= 1e-6 * float(want.abs().max())


class NumbaWithTorchGram(fast_comb.NumbaPasses):
    """The numba combination pass after the torch Gram pass."""

    def gram(self, inputs: Any, mix: Any = None, rows: int = 1) -> torch.Tensor:
        return TORCH.gram(inputs, mix, rows)
