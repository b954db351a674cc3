"""LiNeS: layer l of L scaled by alpha + beta * l / (L - 1), after the method, through
`meldkit merge`; embeddings at depth 0, final norm and LM head at depth L - 1."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from meldkit.api import plan_merge
from meldkit.cli.main import main
from meldkit.errors import PlanError, RecipeError
from meldkit.plan.summary import describe_parameters
from meldkit.testing import read_model

ALPHA, BETA, LAYERS = 0.3, 0.6, 4
_LAYER = re.compile(r"\.layers\.(\d+)\.")


def _ta(base: Path, fts: list[Path], extra: str, method: str = "task_arithmetic") -> str:
    models = "".join(f"  - model: {f}\n    parameters: {{weight: 1.0}}\n" for f in fts)
    return f"merge_method: {method}\nbase_model: {base}\nmodels:\n{models}parameters:\n{extra}"


def expected_scale(name: str) -> float:
    m = _LAYER.search(name)
    if m is not None:
        return ALPHA + BETA * int(m.group(1)) / (LAYERS - 1)
    return ALPHA if "embed_tokens" in name else ALPHA + BETA  # lm_head, model.norm


def test_layer_l_is_scaled_by_alpha_plus_beta_l_over_l_minus_1(family, tmp_path, capsys):
    base, fts = family
    recipe = tmp_path / "r.yaml"
    recipe.write_text(_ta(base, fts, f"  lines: {{alpha: {ALPHA}, beta: {BETA}}}\n"))
    assert main(["merge", str(recipe), str(tmp_path / "out"), "--quiet"]) == 0
    out, b = read_model(tmp_path / "out"), read_model(base)
    f1, f2 = read_model(fts[0]), read_model(fts[1])
    assert set(out) == set(b)
    for name in b:
        # task arithmetic with weights 1: merged = base + tau1 + tau2
        want = b[name] + expected_scale(name) * ((f1[name] - b[name]) + (f2[name] - b[name]))
        torch.testing.assert_close(out[name], want, rtol=0, atol=2e-7, msg=name)
    # Depth runs over the whole stack: layer 0 gets alpha, layer 3 gets alpha + beta.
    assert expected_scale("model.layers.0.mlp.up_proj.weight") == pytest.approx(0.3)
    assert expected_scale("model.layers.3.mlp.up_proj.weight") == pytest.approx(0.9)


def test_slices_share_one_depth_scale_and_params_show_it(family, tmp_path):
    base, (a, b) = family
    slices = "".join(
        f"  - sources:\n"
        f"      - {{model: {base}, layer_range: [{lo}, {hi}]}}\n"
        f"      - {{model: {a}, layer_range: [{lo}, {hi}], parameters: {{weight: 1.0}}}}\n"
        f"      - {{model: {b}, layer_range: [{lo}, {hi}], parameters: {{weight: 1.0}}}}\n"
        for lo, hi in ((0, 2), (2, 4))
    )
    recipe = (
        f"merge_method: task_arithmetic\nbase_model: {base}\nslices:\n{slices}"
        f"parameters:\n  lines_alpha: {ALPHA}\n  lines_beta: {BETA}\n"
    )
    plan = plan_merge(recipe)
    scales = {t.name: t.lines_scale for t in plan.tensors}
    for name, s in scales.items():
        assert s == pytest.approx(expected_scale(name)), name
    text = describe_parameters(plan)
    assert "    lines_scale = 0.3 0.5 0.7 0.9" in text
    assert "lm_head.weight, model.norm.weight:" in text and "lines_scale=0.9" in text


def test_nested_and_flat_forms_plan_the_same(family):
    base, fts = family
    nested = plan_merge(_ta(base, fts, "  lines: {alpha: 0.2, beta: 0.4}\n"))
    flat = plan_merge(_ta(base, fts, "  lines_alpha: 0.2\n  lines_beta: 0.4\n"))
    assert [t.lines_scale for t in nested.tensors] == [t.lines_scale for t in flat.tensors]
    assert not nested.warnings


def test_identical_inputs_return_the_base(family, tmp_path):
    base, _ = family
    recipe = _ta(base, [base, base], "  lines: {alpha: 0.5, beta: 2.0}\n", method="ties")
    recipe += "  density: 0.5\n"
    tmp_recipe = tmp_path / "r.yaml"
    tmp_recipe.write_text(recipe)
    assert main(["merge", str(tmp_recipe), str(tmp_path / "out"), "--quiet"]) == 0
    out, b = read_model(tmp_path / "out"), read_model(base)
    for name in b:
        assert torch.equal(out[name], b[name]), name


def test_refused_without_a_base(family):
    _, (a, b) = family
    recipe = (
        f"merge_method: linear\nmodels:\n  - model: {a}\n    parameters: {{weight: 0.5}}\n"
        f"  - model: {b}\n    parameters: {{weight: 0.5}}\n"
        "parameters:\n  lines: {alpha: 0.5, beta: 0.5}\n"
    )
    with pytest.raises(PlanError) as err:
        plan_merge(recipe)
    assert err.value.problems == [
        "LiNeS needs a base model, but linear merges tensor model.embed_tokens.weight without "
        "one; add `base_model:` (with a method that takes one) or remove the modifier"
    ]


def test_half_set_and_bad_values_are_plan_problems(family):
    base, fts = family
    with pytest.raises(PlanError) as err:
        plan_merge(_ta(base, fts, "  lines_alpha: 0.5\n"))
    assert err.value.problems == [
        "LiNeS needs both lines_alpha and lines_beta: 'lines_alpha' is set but 'lines_beta' is "
        "not (first needed by tensor model.embed_tokens.weight)"
    ]
    with pytest.raises(PlanError) as err:
        plan_merge(_ta(base, fts, "  lines: {alpha: high, beta: 0.5}\n"))
    assert err.value.problems == [
        "parameter 'lines_alpha' for the merge: expected a number, got 'high'"
    ]


def test_nested_form_rejects_unknown_keys(family):
    base, fts = family
    with pytest.raises(RecipeError) as err:
        plan_merge(_ta(base, fts, "  lines: {alpha: 0.5, betta: 0.5}\n"))
    assert err.value.message == (
        "parameters.lines: unknown key 'betta' (only 'alpha' and 'beta'). Did you mean 'beta'?"
    )
    assert err.value.hint == "write lines: {alpha: 0.5, beta: 0.5} (or lines_alpha and lines_beta)"


def test_planning_modifiers_does_not_import_torch(family, tmp_path):
    import subprocess
    import sys

    base, fts = family
    recipe = tmp_path / "r.yaml"
    recipe.write_text(_ta(base, fts, "  lines: {alpha: 0.3, beta: 0.6}\n  norm_match: mean\n"))
    code = (
        "import sys\nfrom meldkit.cli.main import main\n"
        f"assert main(['plan', {str(recipe)!r}, '--params']) == 0\n"
        "assert 'torch' not in sys.modules, 'plan imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
