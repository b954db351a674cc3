"""The engine writing into a dict: the same bytes as a merge to disk, inputs reused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from meldkit import plan_merge, run_merge
from meldkit.execute.in_memory import CachingLoader, merge_plan_into
from meldkit.testing import make_model_family, read_model


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    return make_model_family(
        tmp_path_factory.mktemp("fam"), "llama", n=3, num_layers=4, dtype="bfloat16"
    )


def recipe(base: Path, fts: list[Path], method: str, **params: object) -> dict[str, object]:
    return {
        "merge_method": method,
        "base_model": str(base),
        "models": [
            {"model": str(ft), "parameters": {"weight": [0.2 + 0.1 * i, 0.9], "density": 0.6}}
            for i, ft in enumerate(fts)
        ],
        "parameters": dict(params),
        "dtype": "float32",
        "out_dtype": "bfloat16",
    }


@pytest.mark.parametrize(
    ("method", "params"),
    [("ties", {}), ("dare_ties", {}), ("task_arithmetic", {"norm_match": "mean"}), ("tsv", {})],
)
def test_in_memory_tensors_equal_the_written_model(
    family: tuple[Path, list[Path]], tmp_path: Path, method: str, params: dict[str, object]
) -> None:
    base, fts = family
    r = recipe(base, fts, method, **params)
    if method == "tsv":
        for m in r["models"]:  # type: ignore[attr-defined]
            m["parameters"].pop("density")
    run_merge(r, tmp_path / "out", quiet=True)
    written = read_model(tmp_path / "out")
    out: dict[str, torch.Tensor] = {}
    names = merge_plan_into(plan_merge(r), out)
    assert sorted(names) == sorted(written)
    for name, tensor in written.items():
        assert out[name].dtype == tensor.dtype
        assert torch.equal(out[name], tensor), name


def test_existing_targets_are_written_in_place_in_their_dtype(
    family: tuple[Path, list[Path]],
) -> None:
    base, fts = family
    plan = plan_merge(recipe(base, fts, "task_arithmetic"))
    targets = {t.name: torch.zeros(t.shape, dtype=torch.float32) for t in plan.tensors}
    before = {n: t.data_ptr() for n, t in targets.items()}
    fresh: dict[str, torch.Tensor] = {}
    merge_plan_into(plan, fresh)
    merge_plan_into(plan, targets)
    for name, t in targets.items():
        assert t.data_ptr() == before[name] and t.dtype == torch.float32
        assert torch.equal(t, fresh[name].float())


def test_a_caching_loader_reads_once_and_its_inputs_stay_unchanged(
    family: tuple[Path, list[Path]],
) -> None:
    base, fts = family
    plan = plan_merge(recipe(base, fts, "ties"))
    loader = CachingLoader(plan, "cpu", lambda m: None)
    first: dict[str, torch.Tensor] = {}
    merge_plan_into(plan, first, loader=loader)
    cached = {k: v.clone() for k, v in loader._cache.items()}
    assert loader.cached_bytes == sum(s.info.nbytes for t in plan.tensors for s in t.sources)
    other = plan_merge(recipe(base, fts, "ties", **{"lambda": 0.5}))
    second: dict[str, torch.Tensor] = {}
    reads = []
    original = loader.reader.read
    loader.reader.read = lambda *a, **k: reads.append(a) or original(*a, **k)  # type: ignore[method-assign]
    merge_plan_into(other, second, loader=loader)
    assert reads == []  # everything came from the cache
    for key, value in loader._cache.items():
        assert torch.equal(value, cached[key]), key
    name = plan.tensors[5].name
    assert not torch.equal(first[name], second[name])
    loader.close()
