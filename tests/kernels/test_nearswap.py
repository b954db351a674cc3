"""nearswap: the fast path (:mod:`meldkit.kernels.nearswap`) gives the reference's bits."""

from __future__ import annotations

import pytest
import torch

from meldkit.kernels import nearswap as fast_nearswap
from meldkit.kernels import runner
from meldkit.methods import MergeContext, get_method, load_merge_function
from tests.kernels.helpers import both, set_threads
from tests.methods.helpers import reference_function, resolve_params

pytestmark = pytest.mark.skipif(runner.load("nearswap_numba") is None, reason="numba not installed")


def _inputs(dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    base = torch.randn(300, 170, generator=g)
    # Distances from 0 (the 1e-6 floor) through t to far beyond it; one NaN.
    other = base + torch.randn(300, 170, generator=g) * torch.logspace(-8, 0, 170)
    other[0, :5] = base[0, :5]
    other[1, 0] = float("nan")
    return [base.to(dtype), other.to(dtype)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
@pytest.mark.parametrize("out_dtype", [None, "BF16"])
@pytest.mark.parametrize("base_index", [0, 1])
def test_fast_equals_reference(dtype: torch.dtype, out_dtype: str | None, base_index: int) -> None:
    inputs = _inputs(dtype)
    if base_index == 1:
        inputs.reverse()
    fast, reference = both(
        "nearswap", inputs, base_index, {"t": 0.001}, None, MergeContext("w", 0, "cpu", out_dtype)
    )
    assert fast.dtype == (torch.bfloat16 if out_dtype == "BF16" else torch.float32)
    assert torch.isnan(fast[1, 0])
    assert torch.equal(fast.nan_to_num(), reference.to(fast.dtype).nan_to_num())


def test_thread_count_does_not_change_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = _inputs(torch.bfloat16)
    results = []
    for threads in (1, 2, 3):
        set_threads(monkeypatch, threads)
        results.append(
            both("nearswap", inputs, 0, {"t": 0.001}, None, MergeContext("w", 0, "cpu", "BF16"))[0]
        )
    assert all(torch.equal(results[0].view(torch.int16), r.view(torch.int16)) for r in results[1:])


def test_float64_and_other_devices_take_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = [x.double() for x in _inputs(torch.float32)]
    spec = get_method("nearswap")
    shared, per = resolve_params(spec, 2, 0, {"t": 0.001})
    ctx = MergeContext("w", 0, "cpu")
    assert not fast_nearswap.nearswap.supports(inputs, 0, shared, per, ctx)
    assert not fast_nearswap.nearswap.supports(
        _inputs(torch.float32), 0, shared, per, MergeContext("w", 0, "cuda")
    )
    monkeypatch.setattr(runner, "stored_arrays", lambda *a: pytest.fail("the fast path ran"))
    out = load_merge_function(spec)(list(inputs), 0, shared, per, ctx)
    assert out.dtype == torch.float64
    reference = reference_function("nearswap")(list(inputs), 0, shared, per, ctx)
    assert torch.equal(out.nan_to_num(), reference.nan_to_num())
