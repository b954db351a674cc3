"""The task-vector family's fast path gives the reference's results bit for bit.

The reference (:mod:`meldkit.methods.task_vectors`, called directly) has the hand-worked golden
tests; here the fast path (:mod:`meldkit.kernels.task_vectors`) and the reference run on the
same inputs, with many exact ties in ``|δ|`` (values on a coarse grid) so that the tie rule is
exercised, and the outputs must be identical, in float32 and in bfloat16: the selections, the
DARE/DELLA masks and the tie order decide which model is merged, so they may not differ.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from meldkit.kernels import task_vectors as fast_tv
from meldkit.methods import MergeContext, get_method, load_merge_function, sparsify
from meldkit.methods.task_vector_family import TASK_VECTOR_FAMILY
from tests.kernels.helpers import both, fast_path, set_threads
from tests.methods.helpers import reference_function, resolve_params, tied_inputs

pytestmark = pytest.mark.skipif(not fast_tv.available(), reason="numba not installed")

FAMILY = sorted(TASK_VECTOR_FAMILY)
NAME = "model.layers.3.mlp.down_proj.weight"

PER_MODEL = [
    {"weight": 0.6, "density": 0.3, "gamma": 0.05, "epsilon": 0.1},
    {"weight": 0.3, "density": 0.55, "gamma": 0.1, "epsilon": 0.2},
    {"weight": -0.2, "density": 0.8, "gamma": 0.02, "epsilon": 0.15},
]


def _both(
    method: str,
    inputs: list[torch.Tensor],
    shared: dict[str, Any],
    per: list[dict[str, Any]],
    out_dtype: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fast path (asked for ``out_dtype``) and the reference, cast to it as the engine
    casts the reference's float32 result."""
    fast, reference = both(
        method,
        inputs,
        0,
        shared,
        per,
        MergeContext(NAME, 5, "cpu", out_dtype),
        reference_ctx=MergeContext(NAME, 5, "cpu"),
    )
    if out_dtype == "BF16":
        reference = reference.to(torch.bfloat16)
    return fast, reference


@pytest.mark.parametrize("method", FAMILY)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
@pytest.mark.parametrize("out_dtype", [None, "BF16"])
def test_fast_equals_reference(method: str, dtype: torch.dtype, out_dtype: str | None) -> None:
    inputs = tied_inputs((96, 80), 3, dtype, seed=1)
    fast, reference = _both(method, inputs, {}, [{}, *PER_MODEL], out_dtype)
    assert (
        fast.dtype == reference.dtype == (torch.bfloat16 if out_dtype == "BF16" else torch.float32)
    )
    assert torch.equal(fast, reference)


@pytest.mark.parametrize(
    "method", ["ties", "breadcrumbs_ties", "dare_linear", "della", "task_arithmetic"]
)
@pytest.mark.parametrize(
    "shared",
    [
        {"rescale": True, "lambda": 0.7},
        {"normalize": True, "rescale": False},
        {"normalize": False, "lambda": 1.3},
    ],
)
def test_fast_equals_reference_with_options(method: str, shared: dict[str, Any]) -> None:
    inputs = tied_inputs((3000,), 2, torch.bfloat16, seed=2)
    fast, reference = _both(method, inputs, shared, [{}, *PER_MODEL[:2]])
    assert torch.equal(fast, reference)


@pytest.mark.parametrize("method", ["ties", "breadcrumbs", "dare_ties", "della_linear"])
@pytest.mark.parametrize("density", [0.0, 1.0, 0.999])
def test_fast_equals_reference_at_density_edges(method: str, density: float) -> None:
    inputs = tied_inputs((40, 24), 2, torch.float32, seed=3)
    per = [
        {},
        {"weight": 0.5, "density": density, "epsilon": 0.0005 if density > 0.99 else 0.0},
        {"weight": 0.5, "density": 0.5, "epsilon": 0.1},
    ]
    if method.startswith("della") and density in (0.0, 1.0):
        per[1]["epsilon"] = 0.0
    fast, reference = _both(method, inputs, {"rescale": True}, per)
    assert torch.equal(fast, reference)


def test_mixed_input_dtypes_and_3d_tensors() -> None:
    inputs = tied_inputs((4, 30, 20), 2, torch.float32, seed=4)
    inputs[1] = inputs[1].to(torch.bfloat16)  # one model stored in bf16, the others in fp32
    fast, reference = _both("ties", inputs, {}, [{}, *PER_MODEL[:2]])
    assert torch.equal(fast, reference)


def test_large_tensor_spans_many_chunks_and_partial_ties() -> None:
    # Several kernel chunks, and |δ| values with thousands of ties at each cut-off.
    inputs = tied_inputs((700, 256), 3, torch.bfloat16, seed=5)
    for method in ("ties", "breadcrumbs_ties"):
        fast, reference = _both(method, inputs, {}, [{}, *PER_MODEL], "BF16")
        assert torch.equal(fast, reference)


def _non_finite(
    shape: tuple[int, ...], index: tuple[int, ...], other: tuple[int, ...]
) -> list[torch.Tensor]:
    inputs = tied_inputs(shape, 2, torch.float32, seed=9)
    inputs[1][index] = float("nan")
    inputs[2][other] = float("inf")
    return inputs


@pytest.mark.parametrize("method", ["dare_ties", "della", "task_arithmetic"])
def test_non_finite_deltas_without_rescale(method: str) -> None:
    inputs = _non_finite((40, 50), (0, 5), (0, 17))
    fast, reference = _both(method, inputs, {"rescale": False}, [{}, *PER_MODEL[:2]])
    torch.testing.assert_close(fast, reference, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("method", ["dare_ties", "dare_linear"])
def test_non_finite_deltas_with_rescale(method: str) -> None:
    inputs = _non_finite((40, 50), (0, 5), (0, 17))
    fast, reference = _both(method, inputs, {"rescale": True}, [{}, *PER_MODEL[:2]])
    torch.testing.assert_close(fast, reference, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("method", ["ties", "breadcrumbs"])
def test_non_finite_deltas_select_the_same_positions(method: str) -> None:
    inputs = _non_finite((4000,), (5,), (17,))
    fast, reference = _both(method, inputs, {}, [{}, *PER_MODEL[:2]])
    torch.testing.assert_close(fast, reference, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("method", ["dare_ties", "della", "ties", "breadcrumbs_ties"])
def test_thread_count_does_not_change_the_result(
    method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The kernels split their work into one range per math thread (torch's thread count):
    # sums, tie counts and DELLA's row norms must come out the same for any split.
    inputs = tied_inputs((500, 300), 3, torch.bfloat16, seed=6)
    shared_v, per_v = resolve_params(get_method(method), 4, 0, {}, [{}, *PER_MODEL])
    ctx = MergeContext("w", 1, "cpu")
    results = []
    for threads in (1, 2, 3):
        set_threads(monkeypatch, threads)
        results.append(fast_path(method).merge(list(inputs), 0, shared_v, per_v, ctx))
    assert all(torch.equal(results[0], r) for r in results[1:])
    assert torch.equal(
        results[0], reference_function(method)(list(inputs), 0, shared_v, per_v, ctx)
    )


def test_not_supported_falls_back() -> None:
    ctx = MergeContext("w", 0, "cpu")
    f64 = [torch.zeros(4, dtype=torch.float64)] * 2
    assert not fast_tv.supports(TASK_VECTOR_FAMILY["ties"], f64, ctx)
    della_3d = [torch.zeros(2, 3, 4)] * 2
    assert not fast_tv.supports(TASK_VECTOR_FAMILY["della"], della_3d, ctx)
    one_column = [torch.zeros(5, 1)] * 2
    assert not fast_tv.supports(TASK_VECTOR_FAMILY["della"], one_column, ctx)
    assert not fast_tv.supports(
        TASK_VECTOR_FAMILY["ties"], [torch.zeros(4)] * 2, MergeContext("w", 0, "cuda")
    )
    # The FastPath also needs a base and another model.
    shared_v, per_v = resolve_params(get_method("ties"), 2, 0, {}, {"weight": 1.0})
    inputs = [torch.zeros(4), torch.ones(4)]
    assert fast_tv.ties.supports(inputs, 0, shared_v, per_v, ctx)
    assert not fast_tv.ties.supports(inputs, None, shared_v, per_v, ctx)
    assert not fast_tv.ties.supports(inputs[:1], 0, shared_v, per_v[:1], ctx)
    # float64 through the dispatcher: the reference, in float64.
    f64_inputs = [x.double() for x in tied_inputs((30,), 1, torch.float32, seed=8)]
    out = load_merge_function(get_method("ties"))(list(f64_inputs), 0, shared_v, per_v, ctx)
    assert out.dtype == torch.float64
    assert torch.equal(out, reference_function("ties")(list(f64_inputs), 0, shared_v, per_v, ctx))


def test_without_numba_the_reference_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = tied_inputs((30, 20), 2, torch.bfloat16, seed=7)
    spec = get_method("ties")
    shared_v, per_v = resolve_params(spec, 3, 0, {}, [{}, *PER_MODEL[:2]])
    ctx = MergeContext("w", 0, "cpu")
    fast = fast_tv.ties.merge(list(inputs), 0, shared_v, per_v, ctx)
    monkeypatch.setattr(fast_tv, "kernels", lambda: None)
    monkeypatch.setattr(
        fast_tv, "merge_task_vectors_fused", lambda *a: pytest.fail("fast path ran")
    )
    assert not fast_tv.available()
    assert not fast_tv.supports(TASK_VECTOR_FAMILY["ties"], inputs, ctx)
    assert torch.equal(load_merge_function(spec)(list(inputs), 0, shared_v, per_v, ctx), fast)


@pytest.mark.parametrize("n", [1, 2, 3, 17, 1536, 5000])
def test_della_row_sort_is_numpys_stable_argsort(n: int) -> None:
    module = fast_tv.kernels()
    assert module is not None
    rng = np.random.default_rng(n)
    cases = [
        np.abs(rng.standard_normal(n).astype(np.float32) * 0.01).view(np.uint32),  # |δ| bits
        rng.integers(0, 5, n).astype(np.uint32),  # a narrow span: no insertion pass
        np.full(n, 7, dtype=np.uint32),  # all tied
        rng.integers(0, 2**32 - 1, n, dtype=np.uint64).astype(np.uint32),  # the full span
        rng.integers(0, 3, n).astype(np.uint32) << np.uint32(20),  # few values, far apart
    ]
    with_nan = np.abs(rng.standard_normal(n).astype(np.float32)).view(np.uint32)
    with_nan[::7] = 0x7FC00000  # |NaN| sorts last, as in torch
    with_nan[::5] = 0
    cases.append(with_nan)
    for keys in cases:
        order, spare = np.empty(n, dtype=np.int32), np.empty(n, dtype=np.int32)
        count = np.empty((2, 1 << module._RADIX_BITS), dtype=np.int32)
        got = module._stable_argsort(keys, order, spare, count)
        assert np.array_equal(got, np.argsort(keys, kind="stable"))


def _della_reference(
    keys: np.ndarray, draws: np.ndarray, dme: np.float32, step: np.float32
) -> np.ndarray:
    """Row-wise keep decisions from a full stable sort: the definition della_bits must meet."""
    keep = np.zeros(keys.shape, dtype=bool)
    for r in range(keys.shape[0]):
        ranks = np.empty(keys.shape[1], dtype=np.int64)
        ranks[np.argsort(keys[r], kind="stable")] = np.arange(keys.shape[1])
        p = (ranks.astype(np.float32) * step).astype(np.float32) + dme
        keep[r] = draws[r] < p
    return keep


@pytest.mark.parametrize("n_cols", [2, 13, 300, 1536])
def test_della_bits_equal_a_full_sort(n_cols: int) -> None:
    # Rows whose decisions come from bucket bounds alone, from exact ranks of a few draws,
    # and from sorting the row (heavy ties); row lengths that do and do not fill whole bytes.
    module = fast_tv.kernels()
    assert module is not None
    rng = np.random.default_rng(n_cols)
    rows = [
        rng.standard_normal(n_cols) * 0.01,  # continuous |δ|
        rng.integers(-2, 3, n_cols) * 1e-3,  # few values, many ties
        np.zeros(n_cols),  # all tied: sorted
        np.where(rng.random(n_cols) < 0.5, 0.0, rng.standard_normal(n_cols)),  # half tied at 0
        rng.standard_normal(n_cols) * np.exp2(rng.integers(-40, 0, n_cols)),  # beyond the window
    ]
    nan_row = rng.standard_normal(n_cols)
    nan_row[::3] = np.nan
    rows.append(nan_row)
    delta = np.stack(rows * 3).astype(np.float32)  # 18 rows: groups of 8 and a partial group
    base = rng.standard_normal(delta.shape).astype(np.float32)
    x = (base + delta).astype(np.float32)
    keys = np.abs(x - base).view(np.uint32)
    key = MergeContext("w", 9).stream_key("1")
    draws = sparsify.uniform(key, 0, delta.size).numpy().reshape(delta.shape)
    for density, epsilon in [(0.5, 0.1), (0.3, 0.25), (0.9, 0.05)]:
        dme, step = np.float32(density - epsilon), np.float32(2 * epsilon / (n_cols - 1))
        bits = np.zeros((delta.size + 7) // 8, dtype=np.uint8)
        sums = np.empty((delta.shape[0], 2))
        module.della_bits(
            x.reshape(-1),
            base.reshape(-1),
            0,
            3,
            np.uint64(key & 0xFFFFFFFF),
            np.uint64(key >> 32),
            n_cols,
            dme,
            step,
            bits,
            sums,
        )
        got = np.unpackbits(bits, bitorder="little")[: delta.size].reshape(delta.shape).astype(bool)
        expected = _della_reference(keys, draws, dme, step)
        assert np.array_equal(got, expected)
        # The rows' L1 norms, of δ and of the kept δ (NaN rows stay NaN).
        magnitudes = keys.view(np.float32).astype(np.float64)
        np.testing.assert_allclose(sums[:, 0], magnitudes.sum(axis=1), rtol=1e-13)
        np.testing.assert_allclose(sums[:, 1], (magnitudes * expected).sum(axis=1), rtol=1e-13)
