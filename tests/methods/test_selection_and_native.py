"""The radix select used for magnitude pruning, and methods taking stored-dtype inputs."""

from __future__ import annotations

import pytest
import torch

from meldkit.api import run_merge
from meldkit.methods import sparsify
from meldkit.testing import make_model_family, read_model


@pytest.mark.parametrize("seed", [0, 1])
def test_radix_kth_equals_kthvalue_with_ties(seed):
    g = torch.Generator().manual_seed(seed)
    # many exact ties and zeros: rounded magnitudes
    x = (torch.randn(200_003, generator=g) * 4).round().abs() / 4
    for k in (1, 17, 100_000, 200_003):
        assert sparsify.kth_smallest(x, k) == torch.kthvalue(x, k).values
    mask = sparsify.top_k_mask(x, 70_000)
    assert int(mask.sum()) == 70_000
    assert x[mask].min() >= x[~mask].max()


def test_negative_scores_fall_back_to_kthvalue():
    x = torch.linspace(-3, 3, 100_001)
    assert sparsify.kth_smallest(x, 10) == torch.kthvalue(x, 10).values


@pytest.mark.parametrize(
    "method", ["ties", "dare_ties", "breadcrumbs_ties", "task_arithmetic", "linear", "slerp"]
)
def test_stored_dtype_inputs_give_the_same_bytes_as_upcasting_first(method, tmp_path):
    base, fts = make_model_family(tmp_path / "m", "llama", n=2, dtype="bfloat16")
    models = "".join(
        f"  - {{model: {m}, parameters: {{weight: {w}, density: 0.6}}}}\n"
        for m, w in zip(fts, (0.7, 0.5))
    )
    recipe = f"merge_method: {method}\nbase_model: {base}\nmodels:\n{models}"
    if method == "linear":
        recipe = recipe.replace(f"base_model: {base}\n", "")
    if method == "slerp":
        recipe = f"merge_method: slerp\nbase_model: {base}\nmodels: [{{model: {fts[0]}}}]\nparameters: {{t: 0.3}}\n"
    run_merge(recipe + "out_dtype: float32\n", tmp_path / "native", quiet=True, seed=1)
    run_merge(recipe + "dtype: float32\n", tmp_path / "upcast", quiet=True, seed=1)
    a, b = read_model(tmp_path / "native"), read_model(tmp_path / "upcast")
    for name in a:
        assert torch.equal(a[name], b[name]), name
