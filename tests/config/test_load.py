"""Recipe loading: accepted messy forms, warnings for ignored keys, exact errors."""

from __future__ import annotations

import pytest

from meldkit.config import load_config
from meldkit.config.modelref import ModelPath, parse_model_ref
from meldkit.config.schema import FilterEntry
from meldkit.errors import RecipeError

BASIC = """
merge_method: ties
base_model: org/base
models:
  - model: org/a
    parameters: {weight: 0.5, density: [0.9, 0.5]}
  - model: org/b
    parameters:
      weight: [{filter: mlp, value: 0.3}, {value: 0.5}]
parameters: {normalize: false, tol: 1e-5}
dtype: bfloat16
"""


def test_basic_recipe_parses():
    cfg = load_config(BASIC)
    assert cfg.merge_method == "ties"
    assert str(cfg.base_model) == "org/base"
    assert cfg.models is not None and len(cfg.models) == 2
    assert cfg.models[0].parameters["density"] == (0.9, 0.5)
    assert cfg.models[1].parameters["weight"] == (FilterEntry("mlp", 0.3), FilterEntry(None, 0.5))
    assert cfg.parameters["tol"] == "1e-5"  # YAML reads it as a string; the planner coerces
    assert cfg.source_text == BASIC
    assert [str(r) for r in cfg.referenced_models()] == ["org/base", "org/a", "org/b"]


def test_unknown_keys_warn_with_suggestion_and_strict_raises():
    text = "merge_method: linear\ndype: float16\nweight: 1\nmodels: [{model: a, parameters: {weight: 1}}]\n"
    cfg = load_config(text)
    assert cfg.warnings == (
        "unknown key 'dype' is ignored. Did you mean 'dtype' or 'out_dtype'?",
        "'weight' is a method parameter at the top level and is ignored; put it under 'parameters:'",
    )
    with pytest.raises(RecipeError, match="unknown key 'dype' is ignored"):
        load_config(text, strict=True)


def test_empty_parameters_and_legacy_tokenizer_prefix():
    cfg = load_config(
        "merge_method: linear\nparameters:\nmodels: [{model: a, parameters: }]\ntokenizer_source: model:org/x\n"
    )
    assert cfg.parameters == {}
    assert cfg.models is not None and cfg.models[0].parameters == {}
    assert cfg.tokenizer is not None and str(cfg.tokenizer.source) == "org/x"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "recipe: the recipe is empty"),
        ("merge_method: linear\n", "give exactly one of 'models', 'slices' or 'modules'"),
        ("models: [{model: a}]\n", "missing 'merge_method'"),
        (
            "merge_method: x\nmodels: [a]\nslices: [{sources: [{model: a, layer_range: [0, 1]}]}]\n",
            "give exactly one of 'models', 'slices' or 'modules' (found models, slices)",
        ),
        (
            "merge_method: passthrough\nslices:\n  - sources:\n      - {model: a, layer_range: [0, 4]}\n      - {model: b, layer_range: [0, 8]}\n",
            "slices[0]: all sources of a slice must span the same number of layers (a [0, 4], b [0, 8])",
        ),
        (
            "merge_method: passthrough\nslices: [{sources: [{model: a, layer_range: [4, 4]}]}]\n",
            "slices[0].sources[0].layer_range: [4, 4] selects no layers",
        ),
        ("merge_method: linear\nmodels: [a]\ndtype: float17\n", "dtype: unknown dtype 'float17'"),
        (
            "merge_method: linear\nmodels: [a]\ntokenizer: {source: base}\ntokenizer_source: base\n",
            "give either 'tokenizer' or 'tokenizer_source', not both",
        ),
        (
            "merge_method: linear\nmodels:\n  - model: a\n   parameters: {}\n",
            "recipe: invalid YAML at line 4, column",
        ),
        (
            "merge_method: linear\nmodels: [{model: a+b+c}]\n",
            "cannot parse model reference 'a+b+c' (more than one '+')",
        ),
    ],
)
def test_recipe_errors(text, message):
    with pytest.raises(RecipeError) as info:
        load_config(text)
    assert message in info.value.message


@pytest.mark.parametrize(
    ("text", "model", "lora"),
    [
        ("a/b", ModelPath("a/b"), None),
        ("a/b+c/d", ModelPath("a/b"), ModelPath("c/d")),
        ("a/b@v0.0.1", ModelPath("a/b", "v0.0.1"), None),
        ("a/b@v+c/d@main", ModelPath("a/b", "v"), ModelPath("c/d", "main")),
    ],
)
def test_model_refs_round_trip(text, model, lora):
    ref = parse_model_ref(text)
    assert ref.model == model and ref.lora == lora
    assert str(ref) == text


@pytest.mark.parametrize("text", ["@@@@@", "a+b+c", "a+b+c@d+e@f@g", "a@"])
def test_bad_model_refs(text):
    with pytest.raises(RecipeError, match="cannot parse model reference"):
        parse_model_ref(text)


def test_existing_folder_with_plus_is_taken_literally(tmp_path):
    odd = tmp_path / "model+v2@x"
    odd.mkdir()
    ref = parse_model_ref(str(odd))
    assert ref.lora is None and ref.model.path == str(odd)


def test_dict_form_model_ref():
    ref = parse_model_ref(
        {"model": {"path": "a/b", "revision": "r1"}, "lora": "c/d", "override_architecture": "X"}
    )
    assert str(ref) == "a/b@r1+c/d" and ref.override_architecture == "X"
