"""sce's fast path against its reference (:func:`meldkit.methods.sce.sce`).

The one documented difference is the order of the float64 energy sums: the kernels add each
fixed chunk's squares in lanes (element ``i`` of a chunk into lane ``i % LANES``, then lanes
and chunks in order, :func:`meldkit.kernels.sce.energy_weights`), the reference with one
torch sum. So:

* bit for bit, the fast path is the reference's formula (:func:`~meldkit.methods.sce.select`,
  :func:`~meldkit.methods.sce.mix`) with ω from those lane sums, emulated here in numpy: the
  selection (ties at the top-k cut-off dropped in flat order), the sign election and every
  float32 operation are the reference's;
* against the reference itself, the selection is identical and the outputs agree within the
  pinned tolerance below; inputs whose energy lies on a float32 rounding midpoint make the
  two sums round ω differently, so the tolerance is exercised.

Deltas on a coarse grid make many variances exactly equal, so the tie rule at the top-k
cut-off runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from meldkit.io.dtypes import torch_dtype
from meldkit.kernels import runner
from meldkit.kernels import sce as fast_sce
from meldkit.methods import MergeContext, get_method, load_merge_function
from meldkit.methods import sce as ref_sce
from meldkit.methods.inputs import output_dtype
from tests.kernels.helpers import set_threads
from tests.methods.helpers import resolve_params, same_bits, tied_inputs

pytestmark = pytest.mark.skipif(not fast_sce.available(), reason="numba not installed")

NAME = "model.layers.1.self_attn.q_proj.weight"

# Fast path against the reference, float32 output: |fast - reference| <= F32_ULPS float32
# ulps of max(|reference|, |reference - base|). Measured maximum: 2 ulps on the midpoint-energy
# cases below, 4 over a sweep of 180 of them (seeds 0-29, 2-4 models, with and without a
# base); 0 on every other case here (ω comes out the same).
F32_ULPS = 5
# bfloat16 output: at most one bfloat16 ulp (float32 results a few ulps apart on either side
# of a rounding boundary). Measured maximum: 1.
BF16_ULPS = 1
# ω from the lane sums against the reference's: an energy one float32 ulp off moves both it
# and the normalising sum, so ω may move by two. Measured maximum: 1 ulp on the cases of
# test_lane_energy_weights_agree_with_the_reference, 2 over a sweep of 90 midpoint cases.
OMEGA_ULPS = 2


def _lane_sums(deltas: list[torch.Tensor]) -> np.ndarray:
    """The kernels' energy lanes (chunks x models x LANES, float64), emulated: element ``i``
    of each CHUNK adds its exact float64 square to lane ``i % LANES``, one by one in order
    (numpy's cumsum is sequential; padding adds exact zeros)."""
    n = deltas[0].numel()
    chunk, lanes = fast_sce.CHUNK, fast_sce.LANES
    n_chunks = runner.chunk_count(n, chunk)
    out = np.zeros((n_chunks, len(deltas), lanes))
    for j, d in enumerate(deltas):
        squares = np.zeros(n_chunks * chunk)
        v = d.double().reshape(-1).numpy()
        squares[:n] = v * v
        out[:, j] = np.cumsum(squares.reshape(n_chunks, chunk // lanes, lanes), axis=1)[:, -1]
    return out


def _selected(
    inputs: list[torch.Tensor], base_index: int, topk: float
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The reference's float32 base and selected deltas."""
    base = inputs[base_index].float()
    deltas = [x.float() - base for i, x in enumerate(inputs) if i != base_index]
    ref_sce.select(deltas, topk)
    return base, deltas


def _lane_formula(
    inputs: list[torch.Tensor], topk: float, out_dtype: str | None, base_index: int = 0
) -> torch.Tensor:
    """The reference's formula with ω from the kernels' lane sums."""
    base, deltas = _selected(inputs, base_index, topk)
    omega = fast_sce.energy_weights(_lane_sums(deltas), base.numel())
    return ref_sce.mix(base, deltas, omega).to(output_dtype(inputs, out_dtype))


def _call(
    fn: Any, inputs: list[torch.Tensor], topk: float, out_dtype: str | None, base_index: int = 0
) -> torch.Tensor:
    shared, per = resolve_params(get_method("sce"), len(inputs), base_index, {"select_topk": topk})
    return fn(list(inputs), base_index, shared, per, MergeContext(NAME, 5, "cpu", out_dtype))


def _fast(
    inputs: list[torch.Tensor], topk: float, out_dtype: str | None = None, base_index: int = 0
) -> torch.Tensor:
    shared, per = resolve_params(get_method("sce"), len(inputs), base_index, {"select_topk": topk})
    assert fast_sce.sce.supports(
        list(inputs), base_index, shared, per, MergeContext(NAME, 5, "cpu")
    )
    return _call(fast_sce.sce.merge, inputs, topk, out_dtype, base_index)


TOPKS = [0.0, 0.1, 0.37, 0.5, 0.93, 1.0]


@pytest.mark.parametrize("topk", TOPKS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("out_dtype", [None, "BF16"])
@pytest.mark.parametrize("n_models", [2, 3])
def test_fast_equals_the_formula_with_lane_energies(
    topk: float, dtype: torch.dtype, out_dtype: str | None, n_models: int
) -> None:
    inputs = tied_inputs((70000,), n_models, dtype, seed=n_models)  # several chunks, a partial one
    fast = _fast(inputs, topk, out_dtype)
    assert fast.dtype == (torch.bfloat16 if out_dtype == "BF16" else torch.float32)
    assert same_bits(fast, _lane_formula(inputs, topk, out_dtype))


@pytest.mark.parametrize("shape", [(1,), (7,), (5, 3), (2, 3, 4), (130, 257), (3, 41, 800)])
@pytest.mark.parametrize("topk", [0.3, 0.5, 0.8])
def test_fast_equals_the_formula_across_shapes(shape: tuple[int, ...], topk: float) -> None:
    inputs = tied_inputs(shape, 3, torch.bfloat16, seed=7)
    for out_dtype in (None, "BF16", "F16"):
        fast = _fast(inputs, topk, out_dtype)
        assert fast.shape == torch.Size(shape)
        assert fast.dtype == torch_dtype(out_dtype or "F32")
        assert same_bits(fast, _lane_formula(inputs, topk, out_dtype))


def test_partial_ties_are_exercised(monkeypatch: pytest.MonkeyPatch) -> None:
    # The inputs put the cut-off inside a run of thousands of equal variances, spread over
    # the chunks: the chunk where the budget of dropped ties runs out is redone.
    inputs = tied_inputs((70000,), 3, torch.float32, seed=3)
    var = ref_sce.variance([x - inputs[0] for x in inputs[1:]]).reshape(-1)
    k = int(int(torch.count_nonzero(var)) * 0.37)
    cut = var.sort(descending=True).values[k - 1]
    assert int((var == cut).sum()) > 1000
    assert int((var > cut).sum()) < k < int((var >= cut).sum())
    module = fast_sce.kernels()
    assert module is not None
    redone: list[int] = []
    real = module.energy_lanes_resolved

    def resolved(*args: Any) -> Any:
        redone.append(args[2])
        return real(*args)

    monkeypatch.setattr(module, "energy_lanes_resolved", resolved)
    fast = _fast(inputs, 0.37)
    assert same_bits(fast, _lane_formula(inputs, 0.37, None))
    assert len(redone) == 1 and 0 < redone[0] < 4  # not the first chunk, nor the last
    # Exactly the reference's selection: k positions, the first ties in flat order dropped.
    _, deltas = _selected(inputs, 0, 0.37)
    kept = torch.stack([d != 0 for d in deltas]).any(0)
    assert int(kept.sum()) <= k and bool(kept[var > cut].all())


def test_base_not_first_and_mixed_dtypes() -> None:
    inputs = tied_inputs((300, 170), 3, torch.float32, seed=8)
    inputs[2] = inputs[2].to(torch.bfloat16)
    inputs[3] = inputs[3].to(torch.float16)
    inputs = [inputs[1], inputs[2], inputs[0], inputs[3]]
    assert same_bits(
        _fast(inputs, 0.4, base_index=2), _lane_formula(inputs, 0.4, None, base_index=2)
    )


def _special_inputs() -> list[torch.Tensor]:
    inputs = tied_inputs((4000,), 3, torch.float32, seed=9)
    inputs[1][5] = float("inf")
    inputs[2][17] = float("nan")
    inputs[3][40] = -0.0
    inputs[0][40] = -0.0
    inputs[0][41] = 1e-40  # subnormal
    return inputs


@pytest.mark.parametrize("topk", [0.0, 1.0])
def test_special_values(topk: float) -> None:
    inputs = _special_inputs()
    assert same_bits(_fast(inputs, topk), _lane_formula(inputs, topk, None))


def test_special_values_with_a_selection() -> None:
    inputs = _special_inputs()
    assert same_bits(_fast(inputs, 0.5), _lane_formula(inputs, 0.5, None))


def test_tiny_energies_give_uniform_weights() -> None:
    base = torch.randn(5000, generator=torch.Generator().manual_seed(1))
    inputs = [base, base + 1e-5, base - 2e-5, base.clone()]
    fast = _fast(inputs, 0.5)
    assert same_bits(fast, _lane_formula(inputs, 0.5, None))
    assert same_bits(fast, _call(ref_sce.sce, inputs, 0.5, None))


def test_empty_tensor() -> None:
    inputs = [torch.zeros(0, 4)] * 3
    fast = _fast(inputs, 0.5)
    assert fast.shape == (0, 4) and same_bits(fast, _call(ref_sce.sce, inputs, 0.5, None))


def test_thread_count_does_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = tied_inputs((500, 300), 3, torch.bfloat16, seed=11)
    results = []
    for threads in (1, 2, 3):
        set_threads(monkeypatch, threads)
        results.append(_fast(inputs, 0.45, "BF16"))
    assert all(same_bits(results[0], r) for r in results[1:])
    assert same_bits(results[0], _lane_formula(inputs, 0.45, "BF16"))


def test_without_numba_the_reference_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = tied_inputs((3000,), 2, torch.bfloat16, seed=12)
    calls: list[str] = []
    real_load = runner.load

    def load(name: str) -> Any:
        calls.append(name)
        return None if name == "sce_numba" else real_load(name)

    monkeypatch.setattr(runner, "load", load)
    monkeypatch.setattr(fast_sce, "merge_sce_fused", lambda *a: pytest.fail("the fast path ran"))
    assert not fast_sce.available()
    dispatched = _call(load_merge_function(get_method("sce")), inputs, 0.5, None)
    assert same_bits(dispatched, _call(ref_sce.sce, inputs, 0.5, None))
    assert "sce_numba" in calls


def test_float64_inputs_take_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = [x.double() for x in tied_inputs((50,), 2, torch.float32, seed=13)]
    assert not fast_sce.supports(inputs, MergeContext("w"))
    monkeypatch.setattr(fast_sce, "merge_sce_fused", lambda *a: pytest.fail("the fast path ran"))
    out = _call(load_merge_function(get_method("sce")), inputs, 0.5, None)
    assert out.dtype == torch.float64 and same_bits(out, _call(ref_sce.sce, inputs, 0.5, None))


def test_square_lanes_add_in_lane_order() -> None:
    module = fast_sce.kernels()
    assert module is not None and module.LANES == fast_sce.LANES and module.CHUNK == fast_sce.CHUNK
    rng = np.random.default_rng(0)
    v = (rng.standard_normal(1000) * 10.0 ** rng.integers(-30, 30, 1000)).astype(np.float32)
    start = rng.standard_normal(fast_sce.LANES) ** 2
    got = module.square_lanes(v, start.copy())
    want = start.copy()
    for k, x in enumerate(v.astype(np.float64)):
        want[k % fast_sce.LANES] += x * x
    assert np.array_equal(got, want)


@pytest.mark.parametrize("fused", [True, False])
def test_multiply_add_matches_torch_rounding(fused: bool) -> None:
    module = fast_sce.kernels()
    assert module is not None
    g = torch.Generator().manual_seed(14)
    a, b, c = (torch.randn(1000, generator=g) for _ in range(3))
    out = module.fma32(a.numpy(), b.numpy(), c.numpy(), fused, np.empty(1000, dtype=np.float32))
    expected = (a.double() * b.double() + c.double()).float() if fused else c + a * b
    # The float64 expression rounds twice when fused; that differs only in rare halfway cases.
    assert (torch.from_numpy(out) != expected).sum() <= (1 if fused else 0)
    if fast_sce.torch_fma() == fused:
        assert torch.equal(torch.from_numpy(out), c.clone().addcmul_(a, b))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_variance_keys_are_the_reference_variance(dtype: torch.dtype) -> None:
    # The selection key: |var| of the deltas as float32 bits, Welford's update in torch's
    # rounding (fused multiply-adds where torch uses them), bit for bit.
    module = fast_sce.kernels()
    fused = fast_sce.torch_fma()
    assert module is not None and fused is not None
    inputs = tied_inputs((20000,), 3, dtype, seed=15)
    *xs, base = runner.stored_arrays([*inputs[1:], inputs[0]])
    keys = module.variance_keys(tuple(xs), base, 0, 20000, fused, np.empty(20000, dtype=np.uint32))
    var = ref_sce.variance([x.float() - inputs[0].float() for x in inputs[1:]])
    assert np.array_equal(keys, var.abs().numpy().view(np.uint32))


# ---------------------------------------------------------------------------------------------
# Against the reference itself: the pinned tolerance.


def _midpoint_energy_inputs(
    n_models: int, seed: int, dtype: torch.dtype, with_base: bool
) -> list[torch.Tensor]:
    """Inputs whose first task vector's exact energy ``Σδ²/n`` is a float32 rounding midpoint
    that rounds down, plus squares too small to count in the kernels' lane: torch's sum adds
    them up and rounds ω's energy up, the lanes (and so the kernels) round it down.

    ``δ_0`` is ``k/8`` for integers ``k`` (exact squares, exact sums) with ``Σk²`` a 25-bit
    number ``≡ 1 (mod 4)`` over ``n = 2^16``; 512 entries of lane 0 in the second half of
    chunk 0 are ``2^-21``: each square (``2^-42``) is below half an ulp of that lane's running
    sum, and together they make an ulp of the total."""
    n = 1 << 16
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(-38, 39, (n,), generator=g)
    tiny = torch.arange(fast_sce.CHUNK // 2, fast_sce.CHUNK, fast_sce.LANES)
    k[tiny] = 0
    rest = int((k * k).sum()) - int((k[1:4] ** 2).sum())
    abc = next(
        (a, b, c)
        for a in range(4)
        for b in range(4)
        for c in range(4)
        if (rest + a * a + b * b + c * c) % 4 == 1
    )
    k[1:4] = torch.tensor(abc)
    assert (1 << 24) <= int((k * k).sum()) < (1 << 25)
    d0 = k.float() / 8
    d0[tiny] = 2.0**-21
    deltas = [d0] + [
        torch.randint(-38, 39, (n,), generator=g).float() / 8 for _ in range(n_models - 1)
    ]
    base = torch.randint(-64, 65, (n,), generator=g).float() / 16 if with_base else torch.zeros(n)
    base[tiny] = 0
    inputs = [base.to(dtype)] + [(base + d).to(dtype) for d in deltas]
    for x, d in zip(inputs[1:], deltas):  # the deltas come back exactly
        assert torch.equal(x.float() - inputs[0].float(), d)
    return inputs


def _ulps(x: torch.Tensor, out_dtype: str | None) -> torch.Tensor:
    """The spacing of float32 (or bfloat16) numbers at ``|x|``."""
    if out_dtype == "BF16":
        _, e = torch.frexp(x)  # |x| in [2^(e-1), 2^e): bf16 spacing 2^(e-8)
        return torch.ldexp(torch.ones_like(x), (e - 8).clamp_min(-133))
    return torch.from_numpy(np.spacing(x.abs().numpy().astype(np.float32)))


def _assert_within_tolerance(
    inputs: list[torch.Tensor], topk: float, out_dtype: str | None
) -> float:
    """Fast path and reference: the same selection (the same positions move off the base),
    outputs within the pinned tolerance; returns the largest difference in ulps."""
    fast = _fast(inputs, topk, out_dtype)
    reference = _call(ref_sce.sce, inputs, topk, out_dtype)
    assert fast.dtype == reference.dtype
    base, deltas = _selected(inputs, 0, topk)
    stored_base = base.to(fast.dtype)
    assert torch.equal(fast != stored_base, reference != stored_base)
    selected = torch.stack([d != 0 for d in deltas]).any(0)
    assert not bool((fast != stored_base)[~selected].any())  # only selected positions move
    exact = _call(ref_sce.sce, inputs, topk, None)  # float32: the scale of the difference
    scale = torch.maximum(exact.abs(), (exact - base).abs())
    ulps = float(((fast.float() - reference.float()).abs() / _ulps(scale, out_dtype)).max())
    assert ulps <= (BF16_ULPS if out_dtype == "BF16" else F32_ULPS), ulps
    return ulps


@pytest.mark.parametrize("shape", [(70000,), (130, 257), (3, 41, 800)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("topk", [0.0, 0.5, 1.0])
def test_fast_is_within_tolerance_of_the_reference(
    shape: tuple[int, ...], dtype: torch.dtype, topk: float
) -> None:
    inputs = tied_inputs(shape, 3, dtype, seed=16)  # ties at the cut-off
    for out_dtype in (None, "BF16"):
        _assert_within_tolerance(inputs, topk, out_dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_tolerance_where_the_energy_sums_round_differently(dtype: torch.dtype) -> None:
    differs, ulps = [], [0.0]
    for seed, n_models, with_base in [(0, 2, False), (1, 3, False), (2, 2, True), (3, 3, True)]:
        inputs = _midpoint_energy_inputs(n_models, seed, dtype, with_base)
        deltas = [x.float() - inputs[0].float() for x in inputs[1:]]
        lanes = fast_sce.energy_weights(_lane_sums(deltas), deltas[0].numel())
        differs.append(not torch.equal(lanes, ref_sce.energy_weights(deltas, torch.float32)))
        assert same_bits(_fast(inputs, 1.0), _lane_formula(inputs, 1.0, None))
        for out_dtype in (None, "BF16"):
            ulps.append(_assert_within_tolerance(inputs, 1.0, out_dtype))
    # Not vacuous: ω differs (in most of these cases) and so do the outputs.
    assert sum(differs) >= 2 and max(ulps) > 0


def _omega_ulps(a: torch.Tensor, b: torch.Tensor) -> int:
    assert a.dtype == b.dtype == torch.float32 and bool((a > 0).all() and (b > 0).all())
    return int((a.view(torch.int32).long() - b.view(torch.int32).long()).abs().max())


def test_lane_energy_weights_agree_with_the_reference() -> None:
    g = torch.Generator().manual_seed(17)
    cases = [
        tied_inputs((70000,), 3, torch.float32, seed=18),
        tied_inputs((5, 3), 2, torch.float32, seed=19),
    ]
    wide = torch.randn(3, 40000, generator=g) * torch.exp2(
        torch.randint(-30, 30, (3, 40000), generator=g).float()
    )
    cases.append([torch.zeros(40000), *wide])  # squares over many octaves: the order matters
    cases += [
        _midpoint_energy_inputs(m, seed, torch.float32, seed % 2 == 1)
        for seed, m in [(4, 2), (5, 3), (6, 4), (7, 2)]
    ]
    worst = 0
    for inputs in cases:
        for topk in (1.0, 0.5):
            _, deltas = _selected(inputs, 0, topk)
            lanes = fast_sce.energy_weights(_lane_sums(deltas), deltas[0].numel())
            worst = max(worst, _omega_ulps(lanes, ref_sce.energy_weights(deltas, torch.float32)))
    assert 0 < worst <= OMEGA_ULPS, worst
    # Near-zero energies: uniform weights on both sides.
    flat = [torch.full((10,), 1e-5), torch.zeros(10)]
    uniform = torch.full((2,), 0.5)
    assert torch.equal(fast_sce.energy_weights(_lane_sums(flat), 10), uniform)
    assert torch.equal(ref_sce.energy_weights(flat, torch.float32), uniform)
