"""norm_match: the pre-pass measures each input's whole-model task-vector norm, and the
method receives base + c_t (theta_t - base) with c_t = target / ||tau_t||."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from meldkit.api import plan_merge, run_merge
from meldkit.errors import PlanError
from meldkit.execute.norm_prepass import task_vector_norms
from meldkit.execute.tensors import TensorLoader
from meldkit.methods.modifiers import norm_factors
from meldkit.plan.summary import describe_plan
from meldkit.testing import read_model

from .conftest import task_vector, write_like


def _recipe(method: str, base: Path, fts: list[Path], extra: str = "") -> str:
    models = "".join(f"  - model: {f}\n    parameters: {{weight: 1.0}}\n" for f in fts)
    return f"merge_method: {method}\nbase_model: {base}\nmodels:\n{models}parameters:\n{extra}"


def _norm(tau: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float((t.double() ** 2).sum()) for t in tau.values()))


def test_prepass_norms_equal_independent_norms(family):
    base, fts = family
    plan = plan_merge(_recipe("task_arithmetic", base, fts, "  norm_match: mean\n"))
    assert plan.norm_match == "mean" and all(t.norm_match for t in plan.tensors)
    loader = TensorLoader(plan, "cpu", lambda message: None)
    try:
        norms = task_vector_norms(plan.tensors, loader)
    finally:
        loader.close()
    want = {str(f): _norm(task_vector(f, base)) for f in fts}
    assert norms.keys() == want.keys()
    for key in want:
        assert norms[key] == pytest.approx(want[key], rel=1e-6)
    factors = norm_factors(norms, "mean")
    mean = sum(want.values()) / 2
    for key in want:
        assert factors[key] == pytest.approx(mean / want[key], rel=1e-6)
    assert norm_factors(norms, "min")[max(want, key=want.__getitem__)] < 1.0
    assert norm_factors({"a": 0.0, "b": 2.0}, "mean") == {"a": 1.0, "b": 1.0}


@pytest.fixture(scope="module")
def mismatched(family, tmp_path_factory) -> tuple[Path, Path, Path, Path]:
    """base, ft1, ft2 with ||tau2|| = ||tau1||, and ft2x10 = base + 10 tau2."""
    base, (ft1, ft2) = family
    root = tmp_path_factory.mktemp("mismatch")
    b = read_model(base)
    tau1, tau2 = task_vector(ft1, base), task_vector(ft2, base)
    k = _norm(tau1) / _norm(tau2)
    equal = write_like(ft2, root / "ft2_equal", {n: b[n] + k * tau2[n] for n in b})
    tenfold = write_like(ft2, root / "ft2_x10", {n: b[n] + 10 * k * tau2[n] for n in b})
    return base, ft1, equal, tenfold


@pytest.mark.parametrize("method, extra", [("task_arithmetic", ""), ("ties", "  density: 0.5\n")])
def test_tenfold_task_vector_merges_like_equal_norms(mismatched, tmp_path, method, extra):
    base, ft1, equal, tenfold = mismatched
    # min: the tenfold task vector is scaled back to the other's norm, which it then equals.
    run_merge(
        _recipe(method, base, [ft1, tenfold], extra + "  norm_match: min\n"),
        tmp_path / "rescaled",
        quiet=True,
    )
    run_merge(_recipe(method, base, [ft1, equal], extra), tmp_path / "equal", quiet=True)
    run_merge(_recipe(method, base, [ft1, tenfold], extra), tmp_path / "raw", quiet=True)
    rescaled, same = read_model(tmp_path / "rescaled"), read_model(tmp_path / "equal")
    raw = read_model(tmp_path / "raw")
    for name in same:
        torch.testing.assert_close(rescaled[name], same[name], rtol=1e-5, atol=1e-6, msg=name)
    # Without it, the tenfold task vector dominates (the test would catch a no-op).
    assert not torch.allclose(raw["lm_head.weight"], same["lm_head.weight"], atol=1e-4)


def test_identical_inputs_return_the_base(family, tmp_path):
    base, _ = family
    recipe = _recipe("ties", base, [base, base], "  density: 0.5\n  norm_match: mean\n")
    run_merge(recipe, tmp_path / "out", quiet=True)
    out, b = read_model(tmp_path / "out"), read_model(base)
    for name in b:
        assert torch.equal(out[name], b[name]), name


def test_plan_shows_the_prepass(family):
    base, fts = family
    plan = plan_merge(_recipe("task_arithmetic", base, fts, "  norm_match: max\n"))
    assert plan.prepass_bytes == plan.bytes_to_read
    text = describe_plan(plan)
    assert (
        "norm_match pre-pass (max): task-vector norms over 39 tensors, "
        f"{text.split('bytes to read: ')[1].splitlines()[0]} read before the merge (read twice)"
    ) in text
    # A filter leaves tensors out of both the measurement and the rescaling.
    extra = "  norm_match: [{filter: embed_tokens, value: none}, {value: mean}]\n"
    plan = plan_merge(_recipe("task_arithmetic", base, fts, extra))
    assert [t.name for t in plan.tensors if not t.norm_match] == ["model.embed_tokens.weight"]
    assert plan.prepass_bytes < plan.bytes_to_read
    assert plan.to_dict()["output"]["norm_match"] == "mean"


def test_bad_settings_are_plan_problems(family):
    base, (a, b) = family
    with pytest.raises(PlanError) as err:
        plan_merge(_recipe("task_arithmetic", base, [a, b], "  norm_match: average\n"))
    assert err.value.problems == [
        "parameter 'norm_match' for the merge: expected mean, min, max or none, got 'average'"
    ]
    extra = "  norm_match: [{filter: mlp, value: max}, {value: mean}]\n"
    with pytest.raises(PlanError) as err:
        plan_merge(_recipe("task_arithmetic", base, [a, b], extra))
    assert err.value.problems == [
        "norm_match takes one target for the whole merge, got max, mean; use one of them "
        "(none leaves a tensor out)"
    ]
    linear = (
        f"merge_method: linear\nmodels:\n  - model: {a}\n    parameters: {{weight: 0.5}}\n"
        f"  - model: {b}\n    parameters: {{weight: 0.5}}\nparameters:\n  norm_match: mean\n"
    )
    with pytest.raises(PlanError) as err:
        plan_merge(linear)
    assert err.value.problems == [
        "norm_match needs a base model, but linear merges tensor model.embed_tokens.weight "
        "without one; add `base_model:` (with a method that takes one) or remove the modifier"
    ]


def test_bf16_inputs_are_rescaled_in_float32(tmp_path):
    """Task arithmetic reads bf16 inputs natively (its fast path reads the stored bits); with
    norm_match the engine hands it float32 rescaled inputs instead, with the same result as
    the formula computed in float32 and rounded once."""
    from meldkit.testing import make_model_family

    base, fts = make_model_family(tmp_path / "bf16", "llama", n=2, num_layers=2, dtype="bfloat16")
    run_merge(
        _recipe("task_arithmetic", base, fts, "  norm_match: mean\n"), tmp_path / "out", quiet=True
    )
    out, b = read_model(tmp_path / "out"), read_model(base)
    b32 = {k: v.float() for k, v in b.items()}
    taus = [{k: v.float() - b32[k] for k, v in read_model(f).items()} for f in fts]
    norms = [_norm(t) for t in taus]
    mean = sum(norms) / 2
    for name in b:
        want = b32[name] + sum((mean / n) * t[name] for n, t in zip(norms, taus))
        assert out[name].dtype == torch.bfloat16
        torch.testing.assert_close(
            out[name].float(), want.to(torch.bfloat16).float(), rtol=8e-3, atol=1e-5, msg=name
        )


def test_blocks_of_rows_give_the_same_bytes(family, tmp_path):
    """An element-wise method computes large tensors in blocks of rows: both modifiers apply
    per block with the whole-model factors and the tensor's own scale."""
    from meldkit.execute.policy import EnginePolicy

    base, fts = family
    recipe = _recipe(
        "task_arithmetic", base, fts, "  norm_match: mean\n  lines: {alpha: 0.2, beta: 0.7}\n"
    )
    run_merge(recipe, tmp_path / "whole", quiet=True)
    run_merge(recipe, tmp_path / "blocks", quiet=True, policy=EnginePolicy(chunk_elements=100))
    whole = (tmp_path / "whole" / "model.safetensors").read_bytes()
    assert whole == (tmp_path / "blocks" / "model.safetensors").read_bytes()
