"""Recipe diagnostics that need the models: misspelt method parameters named in the "missing"
error, --strict reporting every warning once, filters that match nothing, layer ranges checked
against the layer counts, and other tools' files refused before anything is read or written.

Each case runs through the API (``meldkit.plan_merge``: the exception's problems) and through
the ``meldkit`` command (the exact ``error:``/``hint:``/``warning:`` lines and the exit code).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import meldkit
from meldkit.cli.main import main
from meldkit.config import load_config
from meldkit.errors import PlanError, RecipeError


def _write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, list[str], str]:
    """Exit code, the non-empty stderr lines, and stdout of ``meldkit *argv``."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, [line for line in captured.err.splitlines() if line.strip()], captured.out


def _plan(recipe: object, **options: object) -> tuple[meldkit.MergePlan, list[str]]:
    seen: list[str] = []
    plan = meldkit.plan_merge(recipe, on_warning=seen.append, **options)
    return plan, seen


# -- a misspelt method parameter is named where the required one is missing -----------------


def _wieght(a: Path, b: Path) -> str:
    return (
        f"merge_method: linear\nmodels:\n  - model: {a}\n    parameters: {{wieght: 0.5}}\n"
        f"  - model: {b}\n    parameters: {{weight: 0.5}}\n"
    )


def test_missing_parameter_names_its_misspelling(llama_family, tmp_path, capsys):
    base, (a, b) = llama_family
    typo = "models[0].parameters: missing required parameter 'weight' for linear; found 'wieght' (did you mean 'weight'?)"
    with pytest.raises(PlanError) as info:
        _plan(_wieght(a, b))
    assert info.value.problems == [typo]
    code, err, out = _cli(capsys, "plan", _write(tmp_path, _wieght(a, b)))
    assert (code, err, out) == (2, [f"error: {typo}"], "")


def test_misspelling_in_a_shared_scope_is_reported_once(llama_family):
    base, (a, b) = llama_family
    recipe = f"merge_method: linear\nparameters: {{Weight: 1}}\nmodels: [{a}, {b}]\n"
    with pytest.raises(PlanError) as info:
        _plan(recipe)
    assert info.value.problems == [
        "parameters: missing required parameter 'weight' for linear; found 'Weight' (did you mean 'weight'?)"
    ]


def test_misspelling_of_a_parameter_given_elsewhere_is_a_warning(llama_family):
    base, (a, b) = llama_family
    recipe = (
        f"merge_method: linear\nparameters: {{weight: 1}}\n"
        f"models:\n  - model: {a}\n    parameters: {{wieght: 0.5}}\n  - model: {b}\n"
    )
    plan, seen = _plan(recipe)
    assert (
        seen
        == plan.warnings
        == [
            "models[0].parameters: parameter 'wieght' is not used by linear and is ignored. Did you mean 'weight'?"
        ]
    )


def test_parameter_written_at_the_top_level_is_named(llama_family, tmp_path, capsys):
    base, (a, b) = llama_family
    text = f"merge_method: linear\nweight: 0.5\nmodels: [{a}, {b}]\n"
    problem = (
        "missing required parameter 'weight' for linear; the top-level 'weight:' is ignored: "
        "put it under 'parameters:'"
    )
    for strict in (False, True):  # the recipe's warning about the key is not a second problem
        with pytest.raises(PlanError) as info:
            _plan(text, strict=strict)
        assert info.value.problems == [problem]
    code, err, _ = _cli(capsys, "plan", _write(tmp_path, text), "--strict")
    assert (code, err) == (2, [f"error: {problem}"])


# -- --strict: every warning is an error, each reported once -----------------------------------


def _two_typos(base: Path, a: Path, b: Path) -> str:
    return (
        f"merge_method: ties\nbase_model: {base}\ndype: float32\n"
        f"models:\n  - model: {a}\n    parameters: {{wieght: 1, density: 0.5}}\n"
        f"  - model: {b}\n    parameters: {{weight: 1, desnity: 0.5}}\n"
    )


_DYPE = "unknown key 'dype' is ignored. Did you mean 'dtype' or 'out_dtype'?"
_DESNITY = "models[1].parameters: parameter 'desnity' is not used by ties and is ignored. Did you mean 'density'?"


def test_strict_reports_recipe_and_plan_warnings_once(llama_family, tmp_path, capsys):
    base, (a, b) = llama_family
    typo = "models[0].parameters: missing required parameter 'weight' for ties; found 'wieght' (did you mean 'weight'?)"
    text = _two_typos(base, a, b)
    with pytest.raises(PlanError) as info:
        _plan(text, strict=True)
    # The misspelt 'wieght' is one problem, not also an "unknown parameter" one.
    assert info.value.problems == [typo, _DYPE, _DESNITY]
    recipe = _write(tmp_path, text)
    code, err, _ = _cli(capsys, "plan", recipe, "--strict", "-v")
    assert code == 2
    assert err == [
        "error: 3 problems found while planning:",
        f"  - {typo}",
        f"  - {_DYPE}",
        f"  - {_DESNITY}",
    ]
    code, err, _ = _cli(capsys, "plan", recipe, "--strict")
    assert (code, err) == (
        2,
        [f"error: {typo} (and 2 more problems)", "hint: add -v to list all 3 problems"],
    )


def test_strict_with_warnings_only(llama_family, tmp_path, capsys):
    base, (a, b) = llama_family
    text = _two_typos(base, a, b).replace("wieght", "weight")
    plan, seen = _plan(text)
    assert seen == plan.warnings == [_DYPE, _DESNITY]
    recipe = _write(tmp_path, text)
    code, err, out = _cli(capsys, "plan", recipe)
    assert code == 0 and err == [f"warning: {_DYPE}", f"warning: {_DESNITY}"]
    assert "plan OK: nothing was computed" in out
    code, err, _ = _cli(capsys, "plan", recipe, "--strict")
    assert (code, err) == (
        2,
        [
            f"error: {_DYPE} (and 1 more problem)",
            "hint: fix the recipe, or drop --strict to only warn; add -v to list all 2 problems",
        ],
    )
    # A recipe loaded without strict keeps its warnings; planning it strictly still refuses.
    with pytest.raises(PlanError) as info:
        _plan(load_config(text), strict=True)
    assert info.value.problems == [_DYPE, _DESNITY]


def test_strict_joins_recipe_warnings_to_missing_models(tmp_path):
    text = f"merge_method: linear\ndype: float32\nmodels: [{tmp_path}/gone]\n"
    with pytest.raises(PlanError) as info:
        _plan(text, strict=True)
    assert len(info.value.problems) == 2 and info.value.problems[1] == _DYPE
    assert f"{tmp_path}/gone" in info.value.problems[0]


# -- filters that match no tensor ----------------------------------------------------------------


def test_filter_matching_nothing_warns_with_the_closest_name(llama_family, tmp_path, capsys):
    base, (a, b) = llama_family
    text = (
        f"merge_method: linear\nparameters:\n  weight: [{{filter: mlp.gate_prj, value: 2}}, {{value: 1}}]\n"
        f"models:\n  - model: {a}\n    parameters:\n"
        f"      weight: [{{filter: self_atn, value: 0.5}}, {{filter: mlp, value: 0.7}}, {{value: 1}}]\n"
        f"  - model: {b}\n    parameters: {{weight: [{{filter: layers.9., value: 0.1}}, {{value: 1}}]}}\n"
    )
    expected = [
        "parameters: filter 'mlp.gate_prj' of parameter 'weight' matches no tensor name of "
        f"{a} or {b}, so its value is never used. Did you mean 'mlp.gate_proj'?",
        f"models[0].parameters: filter 'self_atn' of parameter 'weight' matches no tensor name of {a}, "
        "so its value is never used. Did you mean 'self_attn'?",
        f"models[1].parameters: filter 'layers.9.' of parameter 'weight' matches no tensor name of {b}, "
        "so its value is never used.",
    ]
    plan, seen = _plan(text)
    assert seen == plan.warnings == expected
    q = next(t for t in plan.tensors if t.name == "model.layers.0.self_attn.q_proj.weight")
    assert q.per_input[0]["weight"] == 1  # the misspelt filter fell through, as in MergeKit
    code, err, _ = _cli(capsys, "plan", _write(tmp_path, text))
    assert code == 0 and err == [f"warning: {w}" for w in expected]


def test_filters_that_match_give_no_warning(llama_family):
    base, (a, b) = llama_family
    text = (
        f"merge_method: slerp\nbase_model: {a}\nmodels: [{a}, {b}]\n"
        "parameters:\n  t: [{filter: self_attn, value: [0, 1]}, {filter: '*', value: 0.5}]\n"
    )
    plan, seen = _plan(text)
    assert seen == plan.warnings == []


# -- layer ranges against the layer counts ------------------------------------------------------


def test_every_bad_layer_range_is_reported_with_the_valid_range(llama_family, tmp_path, capsys):
    base, (a, b) = llama_family
    text = (
        "merge_method: passthrough\nslices:\n"
        f"  - sources: [{{model: {a}, layer_range: [0, 2]}}]\n"
        f"  - sources: [{{model: {b}, layer_range: [-1, 2]}}]\n"
        f"  - sources: [{{model: {a}, layer_range: [2, -1]}}]\n"
        f"  - sources: [{{model: {b}, layer_range: [2, 6]}}]\n"
    )
    problems = [
        f"slices[1].sources[0].layer_range: [-1, 2] has a negative start; layers of {b} are 0..3, so use [0, 2]",
        f"slices[2].sources[0].layer_range: [2, -1] has a negative end; layers of {a} are 0..3, so use [2, 3]",
        f"slices[3].sources[0].layer_range: layer_range [2, 6] is outside {b}, which has 4 layers (0..3)",
    ]
    with pytest.raises(PlanError) as info:
        _plan(text)
    assert info.value.problems == problems
    code, err, _ = _cli(capsys, "plan", _write(tmp_path, text))
    assert (code, err) == (
        2,
        [f"error: {problems[0]} (and 2 more problems)", "hint: add -v to list all 3 problems"],
    )


def test_sources_of_unequal_length_are_checked_at_plan_time(llama_family):
    base, (a, b) = llama_family
    text = (
        "merge_method: linear\nslices:\n"
        f"  - sources: [{{model: {a}, layer_range: [0, 2]}}, {{model: {b}, layer_range: [0, 3]}}]\n"
        f"  - sources: [{{model: {a}, layer_range: [2, 4]}}, {{model: {b}, layer_range: [2, -4]}}]\n"
        "parameters: {weight: 1}\n"
    )
    with pytest.raises(PlanError) as info:
        _plan(text)
    assert info.value.problems == [
        f"slices[0]: all sources of a slice must span the same number of layers ({a} [0, 2], {b} [0, 3]); "
        "make every layer_range the same length, or split the slice",
        f"slices[1].sources[1].layer_range: [2, -4] has a negative end; layers of {b} are 0..3",
    ]


# -- other tools' files, refused before reading a model or writing anything ---------------------


def test_moe_recipe_is_named_and_nothing_is_written(llama_family, tmp_path, capsys):
    base, (a, b) = llama_family
    text = (
        f"base_model: {base}\ngate_mode: random\nexperts_per_token: 1\n"
        f"experts:\n  - source_model: {a}\n  - source_model: {b}\n"
    )
    recipe = _write(tmp_path, text)
    out = tmp_path / "out"
    code, err, stdout = _cli(capsys, "merge", recipe, out)
    assert (code, stdout) == (2, "")
    assert err == [
        "error: this is a mergekit-moe recipe (experts, gate_mode, experts_per_token), not a merge "
        "recipe",
        "hint: build it with `meldkit moe RECIPE OUT`; `meldkit merge` merges models that "
        "already are MoE (Mixtral, Qwen3-MoE) with merge recipes",
    ]
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]
    with pytest.raises(RecipeError, match="this is a mergekit-moe recipe"):
        _plan(text)


def test_multi_stage_recipe_is_named(llama_family, tmp_path, capsys):
    base, (a, b) = llama_family
    text = (
        f"name: stage1\nmerge_method: linear\nmodels: [{a}, {b}]\nparameters: {{weight: 1}}\n---\n"
        f"name: final\nmerge_method: slerp\nbase_model: stage1\nmodels: [stage1, {base}]\n"
        "parameters: {t: 0.5}\n"
    )
    recipe = _write(tmp_path, text)
    code, err, _ = _cli(capsys, "merge", recipe, tmp_path / "out")
    assert code == 2
    assert err == [
        f"error: {recipe}: holds 2 YAML documents, a multi-stage (mergekit-multi) recipe of 2 "
        "merges: stage1, final; `meldkit merge` runs a single recipe",
        f"hint: use `meldkit multi {recipe} --out OUT --intermediate-dir DIR` "
        "(`meldkit plan` shows the whole chain)",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]
