"""The planner: slices, scopes, tied heads, contracts, and problems reported together."""

from __future__ import annotations

import builtins

import pytest

from meldkit.errors import PlanError
from meldkit.plan import plan_merge
from meldkit.testing import make_tiny_model


def _by_name(plan):
    return {t.name: t for t in plan.tensors}


def test_frankenmerge_renumbers_layers_and_updates_layer_count(llama_family):
    base, (a, b) = llama_family
    plan = plan_merge(f"""
merge_method: passthrough
slices:
  - sources: [{{model: {a}, layer_range: [0, 2]}}]
  - sources: [{{model: {b}, layer_range: [1, 4]}}]
""")
    t = _by_name(plan)
    assert plan.output_layers == 5
    assert plan.out_config["num_hidden_layers"] == 5
    src = t["model.layers.2.mlp.up_proj.weight"].sources[0]
    assert (src.model, src.name) == (str(b), "model.layers.1.mlp.up_proj.weight")
    assert (
        t["model.layers.4.self_attn.q_proj.weight"].sources[0].name
        == "model.layers.3.self_attn.q_proj.weight"
    )
    assert "model.layers.5.mlp.up_proj.weight" not in t
    # pre tensors come from the first slice, post tensors from the last
    assert t["model.embed_tokens.weight"].sources[0].model == str(a)
    assert t["lm_head.weight"].sources[0].model == str(b)
    assert all(x.copy for x in plan.tensors)  # passthrough without scale is a byte copy


def test_models_form_appends_base_and_resolves_scopes(llama_family):
    base, (a, b) = llama_family
    plan = plan_merge(f"""
merge_method: ties
base_model: {base}
models:
  - model: {a}
    parameters: {{weight: [0.0, 1.0], density: 0.5, lambda: 3}}
  - model: {b}
    parameters:
      weight: [{{filter: mlp, value: 0.25}}, {{value: 0.75}}]
parameters: {{lambda: 2, desnity: 0.1}}
""")
    assert any(
        "'lambda' is one value for the whole merge and is ignored per model" in w
        for w in plan.warnings
    )
    assert any(
        "parameter 'desnity' is not used by ties and is ignored. Did you mean 'density'?" in w
        for w in plan.warnings
    )
    t = _by_name(plan)
    q3 = t["model.layers.3.self_attn.q_proj.weight"]
    assert [s.model for s in q3.sources] == [str(a), str(b), str(base)]
    assert q3.base_index == 2
    assert q3.per_input[2] == {}  # per-non-base parameters are not resolved for the base
    assert q3.per_input[0]["weight"] == pytest.approx(1.0)  # last layer of 4: t = 1
    assert q3.per_input[1]["weight"] == 0.75
    assert q3.per_input[0]["density"] == 0.5 and q3.per_input[1]["density"] == 1.0  # default
    assert q3.shared["lambda"] == 2.0
    layer1 = t["model.layers.1.mlp.up_proj.weight"]
    assert layer1.per_input[0]["weight"] == pytest.approx(1 / 3)
    assert layer1.per_input[1]["weight"] == 0.25
    assert t["model.embed_tokens.weight"].per_input[0]["weight"] == 0.0  # non-layer tensors: t = 0


def test_per_input_filters_see_the_source_layer_index(llama_family):
    base, (a, b) = llama_family
    plan = plan_merge(f"""
merge_method: passthrough
slices:
  - sources:
      - model: {a}
        layer_range: [2, 4]
        parameters: {{scale: [{{filter: layers.2., value: 0.5}}, {{value: 1.0}}]}}
""")
    t = _by_name(plan)
    assert t["model.layers.0.mlp.down_proj.weight"].per_input[0]["scale"] == 0.5
    assert t["model.layers.1.mlp.down_proj.weight"].per_input[0]["scale"] == 1.0
    assert not t["model.layers.0.mlp.down_proj.weight"].copy


def test_all_problems_are_reported_together(llama_family, tmp_path):
    base, (a, b) = llama_family
    with pytest.raises(PlanError) as info:
        plan_merge(f"""
merge_method: linear
models:
  - model: {tmp_path}/missing1
  - model: {tmp_path}/missing2
""")
    assert info.value.problems == [
        f"model folder '{tmp_path}/missing1' does not exist (check the path in the recipe (paths are relative to the current directory))",
        f"model folder '{tmp_path}/missing2' does not exist (check the path in the recipe (paths are relative to the current directory))",
    ]
    with pytest.raises(PlanError) as info:
        plan_merge(f"""
merge_method: ties
models:
  - model: {a}
    parameters: {{density: 2}}
  - model: {b}
""")
    problems = info.value.problems
    assert "ties needs a base model; add `base_model:` to the recipe" in problems


def test_missing_weight_and_out_of_range_parameters(llama_family):
    base, (a, b) = llama_family
    with pytest.raises(PlanError) as info:
        plan_merge(f"""
merge_method: linear
models:
  - model: {a}
    parameters: {{weight: abc}}
  - model: {b}
""")
    assert info.value.problems == [
        f"parameter 'weight' for model {a}: expected a number, got 'abc'",
        f"missing required parameter 'weight' for model {b} (first needed by tensor model.embed_tokens.weight)",
    ]


def test_layer_range_outside_model(llama_family):
    base, (a, b) = llama_family
    with pytest.raises(PlanError) as info:
        plan_merge(
            f"merge_method: passthrough\nslices: [{{sources: [{{model: {a}, layer_range: [2, 6]}}]}}]\n"
        )
    assert info.value.problems == [
        f"slices[0].sources[0].layer_range: layer_range [2, 6] is outside {a}, which has 4 layers (0..3)"
    ]


def test_tied_input_contributes_its_embedding(tmp_path):
    tied = make_tiny_model(tmp_path / "tied", "llama", tie_embeddings=True, seed=1)
    untied = make_tiny_model(tmp_path / "untied", "llama", tie_embeddings=False, seed=2)
    recipe = f"merge_method: linear\nmodels: [{{model: {tied}, parameters: {{weight: 1}}}}, {{model: {untied}, parameters: {{weight: 1}}}}]\n"
    head = _by_name(plan_merge(recipe))["lm_head.weight"]
    assert [s.name for s in head.sources] == ["model.embed_tokens.weight", "lm_head.weight"]
    both_tied = make_tiny_model(tmp_path / "tied2", "llama", tie_embeddings=True, seed=3)
    recipe = f"merge_method: linear\nmodels: [{{model: {tied}, parameters: {{weight: 1}}}}, {{model: {both_tied}, parameters: {{weight: 1}}}}]\n"
    assert "lm_head.weight" not in _by_name(plan_merge(recipe))


def test_vocabulary_mismatch_is_a_clear_error(tmp_path):
    small = make_tiny_model(tmp_path / "v64", "llama", vocab=64)
    big = make_tiny_model(tmp_path / "v80", "llama", vocab=80)
    recipe = f"merge_method: linear\nmodels: [{{model: {small}, parameters: {{weight: 1}}}}, {{model: {big}, parameters: {{weight: 1}}}}]\n"
    with pytest.raises(PlanError) as info:
        plan_merge(recipe)
    (problem,) = info.value.problems
    assert problem.startswith(
        f"the models have different vocabulary sizes ({small} [64, 16], {big} [80, 16] for model.embed_tokens.weight)"
    )
    assert "tokenizer_source: base" in problem and "tokenizer_source: union" in problem
    plan = plan_merge(recipe, unsafe_truncate_embeddings=True)
    assert _by_name(plan)["model.embed_tokens.weight"].shape == (64, 16)


def test_planning_reads_headers_only(llama_family, monkeypatch):
    base, (a, b) = llama_family
    counted = {"bytes": 0}
    real_open = builtins.open

    def counting_open(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        if "b" in mode and str(file).endswith(".safetensors"):
            read = fh.read

            def tally(n=-1):
                data = read(n)
                counted["bytes"] += len(data)
                return data

            fh.read = tally
        return fh

    monkeypatch.setattr(builtins, "open", counting_open)
    plan = plan_merge(
        f"merge_method: linear\nmodels: [{{model: {a}, parameters: {{weight: 1}}}}, {{model: {b}, parameters: {{weight: 1}}}}]\n"
    )
    header_bytes = sum(
        f.stat().st_size - sum(t.nbytes for t in m.index.tensors.values())
        for m in plan.models.values()
        for f in m.index.files
    )
    assert 0 < counted["bytes"] <= header_bytes
    assert plan.bytes_to_read == sum(m.index.total_bytes for m in plan.models.values())
