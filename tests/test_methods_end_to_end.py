"""Every registered method runs from a recipe through `meldkit merge`, on CPU (and on CUDA,
compared with CPU, where a GPU exists)."""

from __future__ import annotations

import pytest
import torch

from meldkit.api import run_merge
from meldkit.methods.registry import get_method, list_methods
from meldkit.testing import read_model

from .method_recipes import recipe_for

METHODS = [m.name for m in list_methods()]
SVD_METHODS = {"tsv", "iso_c", "iso_cts"}


@pytest.mark.parametrize("method", METHODS)
def test_method_runs_from_recipe(method, llama_family, tmp_path):
    base, fts = llama_family
    spec = get_method(method)
    recipe = recipe_for(spec, base, fts)
    out = tmp_path / "out"
    plan = run_merge(recipe, out, quiet=True, seed=7)
    merged = read_model(out)
    reference = read_model(base)
    assert set(merged) == {t.name for t in plan.tensors} == set(reference)
    for name, tensor in merged.items():
        assert tensor.shape == reference[name].shape
        assert torch.isfinite(tensor).all(), name
    # Same seed, same bytes (random methods included), at another thread count too; the SVD
    # methods only at the same one, since LAPACK's blocked factorizations sum in an order that
    # depends on the threads: across thread counts they agree to rounding.
    again = tmp_path / "again"
    if method in SVD_METHODS:
        run_merge(recipe, again, quiet=True, seed=7)
        other = tmp_path / "one-thread"
        run_merge(recipe, other, quiet=True, seed=7, threads=1)
        for name, tensor in read_model(other).items():
            assert torch.allclose(tensor.float(), merged[name].float(), rtol=2e-2, atol=1e-4), name
    else:
        run_merge(recipe, again, quiet=True, seed=7, threads=1)
    assert (out / "model.safetensors").read_bytes() == (again / "model.safetensors").read_bytes()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", METHODS)
def test_cuda_matches_cpu(method, llama_family, tmp_path):
    base, fts = llama_family
    recipe = recipe_for(get_method(method), base, fts)
    run_merge(recipe, tmp_path / "cpu", quiet=True, seed=3)
    run_merge(recipe, tmp_path / "gpu", quiet=True, seed=3, device="cuda")
    cpu, gpu = read_model(tmp_path / "cpu"), read_model(tmp_path / "gpu")
    for name in cpu:
        if method == "arcee_fusion":
            # A hard threshold on a score computed with softmax/KL: GPU rounding may move an
            # element sitting at the threshold to the other side. Allow a handful of them.
            assert (cpu[name] != gpu[name]).float().mean() <= 0.005, name
        elif method == "karcher":
            # An iterative mean with acos/sin near 1: rounding differences grow a little.
            assert torch.allclose(cpu[name], gpu[name], rtol=1e-3, atol=1e-4), name
        else:
            assert torch.allclose(cpu[name], gpu[name], rtol=1e-4, atol=1e-5), name
