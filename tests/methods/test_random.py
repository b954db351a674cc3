"""Statistics and reproducibility of the random methods (DARE, DELLA, arcee_fusion sampling)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from meldkit.methods import MergeContext, sparsify
from tests.methods.helpers import run_method

N = 200_000  # above torch's parallel grain size, so thread count could matter


def sigma(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


@pytest.fixture(scope="module")
def delta() -> torch.Tensor:
    # Nonzero everywhere so that "kept" == "nonzero".
    x = torch.randn(400, 500, generator=torch.Generator().manual_seed(11))
    return x + torch.sign(x) * 0.01


@pytest.fixture
def restore_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def gen(name: str = "w", salt: str = "1", seed: int = 0) -> int:
    return MergeContext(name=name, seed=seed).stream_key(salt)


@pytest.mark.parametrize("density", [0.1, 0.5, 0.9])
def test_bernoulli_kept_fraction(delta: torch.Tensor, density: float) -> None:
    out = sparsify.bernoulli(delta, density, False, gen())
    frac = float((out != 0).float().mean())
    assert abs(frac - density) < 5 * sigma(density, N)
    kept = out != 0
    assert torch.equal(out[kept], delta[kept])  # no rescale: kept values untouched


def test_bernoulli_rescale_preserves_l1(delta: torch.Tensor) -> None:
    out = sparsify.bernoulli(delta, 0.3, True, gen())
    assert math.isclose(float(out.abs().sum()), float(delta.abs().sum()), rel_tol=1e-5)


def test_dare_linear_preserves_l1_of_task_vector(delta: torch.Tensor) -> None:
    base = torch.full_like(delta, 0.25)
    out = run_method(
        "dare_linear", [base, base + delta], 0, per_input={"weight": 1.0, "density": 0.4}
    )
    moved = out - base
    assert abs(float((moved != 0).float().mean()) - 0.4) < 5 * sigma(0.4, N)
    assert math.isclose(float(moved.abs().sum()), float(delta.abs().sum()), rel_tol=1e-4)


def test_della_kept_fraction_and_rank_slope(delta: torch.Tensor) -> None:
    density, eps = 0.5, 0.2
    out = sparsify.della_magprune(delta, density, eps, False, gen())
    kept = out != 0
    assert abs(float(kept.float().mean()) - density) < 5 * sigma(density, N)
    # Row length n = 500: the top tenth of ranks (450..499, mean 474.5) keeps with
    # p = d - eps + 2 eps * 474.5/499 = d + 0.9018 eps; the bottom tenth with d - 0.9018 eps.
    ranks = delta.abs().argsort(dim=1).argsort(dim=1)
    top = float(kept[ranks >= 450].float().mean())
    bottom = float(kept[ranks < 50].float().mean())
    n_decile = 400 * 50
    slope = 2 * eps * 474.5 / 499 - eps
    assert abs(top - (density + slope)) < 5 * sigma(density + slope, n_decile)
    assert abs(bottom - (density - slope)) < 5 * sigma(density - slope, n_decile)


def test_della_rescale_preserves_l1(delta: torch.Tensor) -> None:
    out = sparsify.della_magprune(delta, 0.4, 0.1, True, gen())
    assert math.isclose(float(out.abs().sum()), float(delta.abs().sum()), rel_tol=1e-5)


def test_della_one_element_rows_have_no_nan() -> None:
    # MergeKit divides 0 by 0 here; each 1-element row is kept with probability `density`.
    x = torch.ones(N, 1)
    out = sparsify.della_magprune(x, 0.3, 0.1, False, gen())
    assert torch.isfinite(out).all()
    assert abs(float(out.mean()) - 0.3) < 5 * sigma(0.3, N)
    merged = run_method(
        "della",
        [torch.zeros(1), torch.ones(1)],
        0,
        per_input={"weight": 1.0, "density": 0.5, "epsilon": 0.1},
    )
    assert torch.isfinite(merged).all()


RANDOM_METHODS = [
    ("dare_ties", {"weight": 0.6, "density": 0.3}),
    ("dare_linear", {"weight": 0.6, "density": 0.3}),
    ("della", {"weight": 0.6, "density": 0.3, "epsilon": 0.1}),
    ("della_linear", {"weight": 0.6, "density": 0.3, "epsilon": 0.1}),
]


def three_inputs(shape: tuple[int, ...] = (400, 500)) -> list[torch.Tensor]:
    return [torch.randn(shape, generator=torch.Generator().manual_seed(i)) for i in range(3)]


@pytest.mark.parametrize(("name", "per"), RANDOM_METHODS)
def test_same_seed_and_name_same_bytes(name: str, per: dict[str, float]) -> None:
    inputs = three_inputs()
    a = run_method(name, inputs, 0, per_input=per, seed=5, tensor_name="layers.3.mlp.w")
    b = run_method(name, inputs, 0, per_input=per, seed=5, tensor_name="layers.3.mlp.w")
    assert torch.equal(a, b)
    c = run_method(name, inputs, 0, per_input=per, seed=5, tensor_name="layers.4.mlp.w")
    d = run_method(name, inputs, 0, per_input=per, seed=6, tensor_name="layers.3.mlp.w")
    assert not torch.equal(a, c) and not torch.equal(a, d)


@pytest.mark.parametrize(("name", "per"), RANDOM_METHODS)
def test_thread_count_does_not_change_bytes(
    name: str, per: dict[str, float], restore_threads: None
) -> None:
    inputs = three_inputs()
    torch.set_num_threads(1)
    one = run_method(name, inputs, 0, per_input=per, seed=1)
    torch.set_num_threads(2)
    two = run_method(name, inputs, 0, per_input=per, seed=1)
    assert torch.equal(one, two)


def test_each_model_gets_its_own_mask() -> None:
    base = torch.zeros(N)
    ones = torch.ones(N)
    out = run_method(
        "dare_linear",
        [base, ones, ones],
        0,
        {"rescale": False},
        per_input={"weight": 1.0, "density": 0.5},
    )
    # Independent masks: values 0, 1, 2 in proportions 1/4, 1/2, 1/4.
    frac_two = float((out == 2).float().mean())
    assert abs(frac_two - 0.25) < 5 * sigma(0.25, N)


def test_order_of_tensors_does_not_matter() -> None:
    x, y = three_inputs((50, 40)), three_inputs((30, 20))
    per = {"weight": 1.0, "density": 0.5}
    a1 = run_method("dare_ties", x, 0, per_input=per, tensor_name="a")
    b1 = run_method("dare_ties", y, 0, per_input=per, tensor_name="b")
    b2 = run_method("dare_ties", y, 0, per_input=per, tensor_name="b")
    a2 = run_method("dare_ties", x, 0, per_input=per, tensor_name="a")
    assert torch.equal(a1, a2) and torch.equal(b1, b2)


def test_no_seed_means_seed_zero() -> None:
    inputs = three_inputs((20, 30))
    per = {"weight": 1.0, "density": 0.5}
    assert torch.equal(
        run_method("dare_ties", inputs, 0, per_input=per, seed=None),
        run_method("dare_ties", inputs, 0, per_input=per, seed=0),
    )


def test_generator_stream_is_chunked_deterministically() -> None:
    # The mask of the first DRAW_CHUNK elements does not depend on the tensor's length.
    small = torch.ones(1000)
    large = torch.ones(sparsify.DRAW_CHUNK + 1000)
    a = sparsify.bernoulli(small, 0.5, False, gen())
    b = sparsify.bernoulli(large, 0.5, False, gen())
    assert torch.equal(a, b[:1000])


def test_arcee_fusion_sampling_is_reproducible(restore_threads: None) -> None:
    # Over 1e6 elements the quartiles come from a seeded sample.
    g = torch.Generator().manual_seed(3)
    base = torch.randn(1100, 1000, generator=g)
    other = base + 0.01 * torch.randn(1100, 1000, generator=g)
    torch.set_num_threads(1)
    a = run_method("arcee_fusion", [base, other], 0, seed=2)
    torch.set_num_threads(2)
    b = run_method("arcee_fusion", [base, other], 0, seed=2)
    assert torch.equal(a, b)
    changed = float((a != base).float().mean())
    assert 0.0 < changed < 0.5  # only outliers of the importance are taken


def test_uniform_stream_statistics() -> None:
    u = sparsify.uniform(MergeContext("w", 0).stream_key("x"), 0, 1 << 20)
    assert float(u.min()) >= 0 and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.002
    # Neighbouring draws are uncorrelated, and two keys give unrelated streams.
    assert abs(float(torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1])) < 0.01
    v = sparsify.uniform(MergeContext("w", 0).stream_key("y"), 0, 1 << 20)
    assert abs(float(torch.corrcoef(torch.stack([u, v]))[0, 1])) < 0.01
