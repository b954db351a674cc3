"""CMA-ES and random search: seeded, replayable, inside the unit cube."""

from __future__ import annotations

import numpy as np
import pytest

from meldkit.evolve.optimizers import make_optimizer

pytest.importorskip("cma")


def sphere(x: list[float]) -> float:
    return -sum((v - 0.3) ** 2 for v in x)  # maximised at 0.3 everywhere


def run(name: str, seed: int, generations: int, n: int = 5) -> list[list[float]]:
    opt = make_optimizer(name, [0.5] * n, 1 / 6, seed, 6)
    asked: list[list[float]] = []
    for _ in range(generations):
        xs = opt.ask()
        np.random.rand(3)  # numpy's global stream must not matter
        opt.tell(xs, [sphere(x) for x in xs])
        asked += xs
    return asked


@pytest.mark.parametrize("name", ["cma", "random"])
def test_same_seed_same_candidates_other_seed_others(name: str) -> None:
    np.random.seed(1)
    a = run(name, 7, 4)
    np.random.seed(2)
    b = run(name, 7, 4)
    assert a == b
    assert run(name, 8, 4) != a
    assert all(0.0 <= v <= 1.0 for x in a for v in x)


def test_cma_improves_a_smooth_objective() -> None:
    asked = run("cma", 0, 25)
    first, last = asked[:6], asked[-6:]
    assert max(map(sphere, last)) > max(map(sphere, first))
    assert max(map(sphere, last)) > -0.01


def test_a_replayed_optimizer_proposes_what_the_original_did() -> None:
    original = make_optimizer("cma", [0.5] * 3, 0.2, 3, None)
    record = []
    for _ in range(3):
        xs = original.ask()
        fs = [sphere(x) for x in xs]
        original.tell(xs, fs)
        record.append((xs, fs))
    replay = make_optimizer("cma", [0.5] * 3, 0.2, 3, None)
    for xs, fs in record:
        assert replay.ask() == xs
        replay.tell(xs, fs)
    assert replay.ask() == original.ask()


def test_one_gene_genomes_work_with_cma() -> None:
    opt = make_optimizer("cma", [0.5], 0.2, 0, 4)
    xs = opt.ask()
    assert len(xs) == 4 and all(len(x) == 1 for x in xs)
    opt.tell(xs, [sphere(x) for x in xs])


def test_random_search_starts_at_the_starting_point() -> None:
    opt = make_optimizer("random", [0.1, 0.2], 0.2, 0, 3)
    first = opt.ask()
    assert first[0] == [0.1, 0.2] and len(first) == 3
    assert [0.1, 0.2] not in opt.ask()
