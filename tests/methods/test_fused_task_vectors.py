"""The fused CPU kernels give the eager task-vector path's results bit for bit.

The eager path (:func:`meldkit.methods.task_vectors.merge_task_vectors` with the fused path
switched off) has the hand-worked golden tests; here both paths run on the same inputs, with
many exact ties in ``|δ|`` (values on a coarse grid) so that the tie rule is exercised, and
the outputs must be identical, in float32 and in bfloat16.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from meldkit.methods import MergeContext, get_method, sparsify, task_vectors_fused
from meldkit.methods.catalog import TASK_VECTOR_FAMILY
from meldkit.methods.task_vectors import merge_task_vectors
from tests.methods.helpers import resolve_params, tied_inputs

pytestmark = pytest.mark.skipif(not task_vectors_fused.available(), reason="numba not installed")

FAMILY = sorted(TASK_VECTOR_FAMILY)


@pytest.fixture
def eager(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A function that runs the eager path (fused path switched off)."""

    def run(*args: Any, **kwargs: Any) -> torch.Tensor:
        with monkeypatch.context() as m:
            m.setattr(task_vectors_fused, "supports", lambda *a: False)
            return merge_task_vectors(*args, **kwargs)

    yield run


_inputs = tied_inputs


def _both(method: str, inputs: list[torch.Tensor], shared: dict[str, Any], per: list[dict[str, Any]],
          eager: Any, out_dtype: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    spec = get_method(method)
    shared_v, per_v = resolve_params(spec, len(inputs), 0, shared, per)
    ctx = MergeContext("model.layers.3.mlp.down_proj.weight", 5, "cpu", out_dtype)
    assert task_vectors_fused.supports(TASK_VECTOR_FAMILY[method], inputs, ctx)
    fused = merge_task_vectors(list(inputs), 0, shared_v, per_v, ctx, method=method)
    reference = eager(list(inputs), 0, shared_v, per_v, MergeContext(ctx.name, 5, "cpu"), method=method)
    if out_dtype == "BF16":
        reference = reference.to(torch.bfloat16)
    return fused, reference


PER_MODEL = [
    {"weight": 0.6, "density": 0.3, "gamma": 0.05, "epsilon": 0.1},
    {"weight": 0.3, "density": 0.55, "gamma": 0.1, "epsilon": 0.2},
    {"weight": -0.2, "density": 0.8, "gamma": 0.02, "epsilon": 0.15},
]


@pytest.mark.parametrize("method", FAMILY)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
@pytest.mark.parametrize("out_dtype", [None, "BF16"])
def test_fused_equals_eager(method: str, dtype: torch.dtype, out_dtype: str | None, eager: Any) -> None:
    inputs = _inputs((96, 80), 3, dtype, seed=1)
    fused, reference = _both(method, inputs, {}, [{}, *PER_MODEL], eager, out_dtype)
    assert fused.dtype == reference.dtype
    assert torch.equal(fused, reference)


@pytest.mark.parametrize("method", ["ties", "breadcrumbs_ties", "dare_linear", "della", "task_arithmetic"])
@pytest.mark.parametrize(
    "shared",
    [
        {"rescale": True, "lambda": 0.7},
        {"normalize": True, "rescale": False},
        {"normalize": False, "lambda": 1.3},
    ],
)
def test_fused_equals_eager_with_options(method: str, shared: dict[str, Any], eager: Any) -> None:
    inputs = _inputs((3000,), 2, torch.bfloat16, seed=2)
    fused, reference = _both(method, inputs, shared, [{}, *PER_MODEL[:2]], eager)
    assert torch.equal(fused, reference)


@pytest.mark.parametrize("method", ["ties", "breadcrumbs", "dare_ties", "della_linear"])
@pytest.mark.parametrize("density", [0.0, 1.0, 0.999])
def test_fused_equals_eager_at_density_edges(method: str, density: float, eager: Any) -> None:
    inputs = _inputs((40, 24), 2, torch.float32, seed=3)
    per = [{}, {"weight": 0.5, "density": density, "epsilon": 0.0005 if density > 0.99 else 0.0},
           {"weight": 0.5, "density": 0.5, "epsilon": 0.1}]
    if method.startswith("della") and density in (0.0, 1.0):
        per[1]["epsilon"] = 0.0
    fused, reference = _both(method, inputs, {"rescale": True}, per, eager)
    assert torch.equal(fused, reference)


def test_fused_handles_mixed_input_dtypes_and_3d_tensors(eager: Any) -> None:
    inputs = _inputs((4, 30, 20), 2, torch.float32, seed=4)
    inputs[1] = inputs[1].to(torch.bfloat16)  # one model stored in bf16, the others in fp32
    fused, reference = _both("ties", inputs, {}, [{}, *PER_MODEL[:2]], eager)
    assert torch.equal(fused, reference)


def test_large_tensor_spans_many_chunks_and_partial_ties(eager: Any) -> None:
    # Several fused chunks, and |δ| values with thousands of ties at each cut-off.
    inputs = _inputs((700, 256), 3, torch.bfloat16, seed=5)
    for method in ("ties", "breadcrumbs_ties"):
        fused, reference = _both(method, inputs, {}, [{}, *PER_MODEL], eager, "BF16")
        assert torch.equal(fused, reference)


@pytest.mark.parametrize("method", ["dare_ties", "della", "ties", "breadcrumbs_ties"])
def test_thread_count_does_not_change_the_result(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The kernels split their work into one range per math thread (torch's thread count):
    # sums, tie counts and DELLA's row norms must come out the same for any split.
    from meldkit.methods import kernel_runner

    inputs = _inputs((500, 300), 3, torch.bfloat16, seed=6)
    spec = get_method(method)
    shared_v, per_v = resolve_params(spec, 4, 0, {}, [{}, *PER_MODEL])
    ctx = MergeContext("w", 1, "cpu")
    results = []
    for threads in (1, 2, 3):
        monkeypatch.setattr(kernel_runner.torch, "get_num_threads", lambda t=threads: t)
        results.append(merge_task_vectors(list(inputs), 0, shared_v, per_v, ctx, method=method))
    assert all(torch.equal(results[0], r) for r in results[1:])


@pytest.mark.parametrize("start", [0, 12345, (1 << 32) - 5])
def test_kernel_stream_equals_torch_stream(start: int) -> None:
    from meldkit.methods import kernels

    key = MergeContext("w", 3).stream_key("1")
    out = kernels.uniform_range(np.uint64(key & 0xFFFFFFFF), np.uint64(key >> 32), start,
                                np.empty(1000, dtype=np.float32))
    assert torch.equal(torch.from_numpy(out), sparsify.uniform(key, start, start + 1000))


def test_uniform_stream_statistics() -> None:
    u = sparsify.uniform(MergeContext("w", 0).stream_key("x"), 0, 1 << 20)
    assert float(u.min()) >= 0 and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.002
    # Neighbouring draws are uncorrelated, and two keys give unrelated streams.
    assert abs(float(torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1])) < 0.01
    v = sparsify.uniform(MergeContext("w", 0).stream_key("y"), 0, 1 << 20)
    assert abs(float(torch.corrcoef(torch.stack([u, v]))[0, 1])) < 0.01


def test_not_supported_falls_back() -> None:
    ctx = MergeContext("w", 0, "cpu")
    f64 = [torch.zeros(4, dtype=torch.float64)] * 2
    assert not task_vectors_fused.supports(TASK_VECTOR_FAMILY["ties"], f64, ctx)
    della_3d = [torch.zeros(2, 3, 4)] * 2
    assert not task_vectors_fused.supports(TASK_VECTOR_FAMILY["della"], della_3d, ctx)
    assert not task_vectors_fused.supports(TASK_VECTOR_FAMILY["ties"], [torch.zeros(4)] * 2,
                                           MergeContext("w", 0, "cuda"))


def test_without_numba_the_eager_path_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = _inputs((30, 20), 2, torch.bfloat16, seed=7)
    spec = get_method("ties")
    shared_v, per_v = resolve_params(spec, 3, 0, {}, [{}, *PER_MODEL[:2]])
    ctx = MergeContext("w", 0, "cpu")
    fused = merge_task_vectors(list(inputs), 0, shared_v, per_v, ctx, method="ties")
    monkeypatch.setattr(task_vectors_fused, "kernels", lambda: None)
    assert not task_vectors_fused.available()
    assert not task_vectors_fused.supports(TASK_VECTOR_FAMILY["ties"], inputs, ctx)
    assert torch.equal(merge_task_vectors(list(inputs), 0, shared_v, per_v, ctx, method="ties"), fused)



@pytest.mark.parametrize("n", [1, 2, 3, 17, 1536, 5000])
def test_della_row_sort_is_numpys_stable_argsort(n: int) -> None:
    from meldkit.methods import kernels

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
        got = kernels._stable_argsort(keys, order, spare, np.empty((2, 1 << kernels._RADIX_BITS), dtype=np.int32))
        assert np.array_equal(got, np.argsort(keys, kind="stable"))


def _della_reference(keys: np.ndarray, draws: np.ndarray, dme: np.float32, step: np.float32) -> np.ndarray:
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
    from meldkit.methods import kernels

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
        kernels.della_bits(x.reshape(-1), base.reshape(-1), 0, 3, np.uint64(key & 0xFFFFFFFF),
                           np.uint64(key >> 32), n_cols, dme, step, bits, sums)
        got = np.unpackbits(bits, bitorder="little")[: delta.size].reshape(delta.shape).astype(bool)
        expected = _della_reference(keys, draws, dme, step)
        assert np.array_equal(got, expected)
        # The rows' L1 norms, of δ and of the kept δ (NaN rows stay NaN).
        magnitudes = keys.view(np.float32).astype(np.float64)
        np.testing.assert_allclose(sums[:, 0], magnitudes.sum(axis=1), rtol=1e-13)
        np.testing.assert_allclose(sums[:, 1], (magnitudes * expected).sum(axis=1), rtol=1e-13)
