"""Recipe diagnostics at load time: typos named at every level, --strict reporting each warning
once, layer ranges checked everywhere, and files that are not merge recipes recognised."""

from __future__ import annotations

import pytest

from meldkit.config import load_config
from meldkit.config.keys import RecipeProblems
from meldkit.config.ranges import range_problem
from meldkit.errors import RecipeError

_SRC = "{model: a, layer_range: [0, 2]}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "merge_methd: linear\nmodels: [a]\n",
            "missing 'merge_method' (found 'merge_methd': did you mean 'merge_method'?)",
        ),
        (
            "Merge_Method: linear\nmodels: [a]\n",
            "missing 'merge_method' (found 'Merge_Method': did you mean 'merge_method'?)",
        ),
        (
            "merge_method: linear\nmodel: [a]\n",
            "give exactly one of 'models', 'slices' or 'modules' "
            "(found 'model': did you mean 'models'?)",
        ),
        (
            f"merge_method: passthrough\nslice: [{{sources: [{_SRC}]}}]\n",
            "give exactly one of 'models', 'slices' or 'modules' "
            "(found 'slice': did you mean 'slices'?)",
        ),
        (
            "merge_method: linear\nmodels: [{modle: a}]\n",
            "models[0]: missing 'model' (found 'modle': did you mean 'model'?)",
        ),
        (
            f"merge_method: passthrough\nslices: [{{source: [{_SRC}]}}]\n",
            "slices[0]: missing 'sources' (found 'source': did you mean 'sources'?)",
        ),
        (
            "merge_method: passthrough\nslices: [{sources: [{modl: a, layer_range: [0, 2]}]}]\n",
            "slices[0].sources[0]: missing 'model' (found 'modl': did you mean 'model'?)",
        ),
        (
            "merge_method: passthrough\nslices: [{sources: [{model: a, layer_rnge: [0, 2]}]}]\n",
            "slices[0].sources[0]: missing 'layer_range' "
            "(found 'layer_rnge': did you mean 'layer_range'?)",
        ),
        (
            "merge_method: linear\nmodules: {text: {model: [a]}}\n",
            "modules.text: give exactly one of 'models' or 'slices' "
            "(found 'model': did you mean 'models'?)",
        ),
        (
            "merge_method: linear\nmodels: [a]\nparameters: {weight: [{filter: mlp, vaule: 1}]}\n",
            "parameters.weight[0]: a conditional entry needs a 'value' "
            "(found 'vaule': did you mean 'value'?)",
        ),
        (
            "merge_method: linear\nmodels: [a]\nparameters: {weight: [{fitler: mlp, value: 1}]}\n",
            "parameters.weight[0]: unknown key 'fitler' (only 'filter' and 'value'). "
            "Did you mean 'filter'?",
        ),
        ("merge_method: 5\nmodels: [a]\n", "merge_method: expected a method name, got 5"),
    ],
)
def test_missing_key_names_the_misspelt_one(text: str, message: str) -> None:
    with pytest.raises(RecipeError) as info:
        load_config(text)
    assert info.value.message == message


def test_missing_key_without_a_lookalike_stays_plain() -> None:
    with pytest.raises(RecipeError) as info:
        load_config("models: [a]\nsomething: 1\n")
    assert info.value.message == "missing 'merge_method'"
    assert info.value.hint == "add e.g. `merge_method: linear` (`meldkit methods` lists them)"
    with pytest.raises(RecipeError) as info:
        load_config("merge_method: linear\nmodels: [{parameters: {weight: 1}}]\n")
    assert info.value.message == "models[0]: missing 'model'"


_EVERY_LEVEL = """\
merge_method: passthrough
dtyp: float16
slices:
  - sources:
      - model: a
        layer_range: [0, 2]
        paramters: {scale: 1}
    base_modle: a
tokenizer:
  sorce: base
  tokens:
    <x>: {source: a, forse: true}
"""
_EVERY_LEVEL_WARNINGS = [
    "unknown key 'dtyp' is ignored. Did you mean 'dtype' or 'out_dtype'?",
    "unknown key 'slices[0].base_modle' is ignored. Did you mean 'base_model'?",
    "unknown key 'slices[0].sources[0].paramters' is ignored. Did you mean 'parameters'?",
    "unknown key 'tokenizer.sorce' is ignored. Did you mean 'source'?",
    "unknown key 'tokenizer.tokens.<x>.forse' is ignored. Did you mean 'force'?",
]


def test_unknown_keys_warn_with_the_closest_key_at_every_level() -> None:
    cfg = load_config(_EVERY_LEVEL)
    assert list(cfg.warnings) == _EVERY_LEVEL_WARNINGS
    cfg = load_config("merge_method: linear\nmodels:\n  - model: a\n    parameter: {weight: 1}\n")
    assert cfg.warnings == (
        "unknown key 'models[0].parameter' is ignored. Did you mean 'parameters'?",
    )
    cfg = load_config(
        "merge_method: linear\nmodules:\n  text:\n    models: [a]\n    parameter: {}\n"
    )
    assert cfg.warnings == (
        "unknown key 'modules.text.parameter' is ignored. Did you mean 'parameters'?",
    )


def test_strict_raises_every_warning_together_each_once() -> None:
    with pytest.raises(RecipeProblems) as info:
        load_config(_EVERY_LEVEL, strict=True)
    assert info.value.problems == _EVERY_LEVEL_WARNINGS
    assert info.value.message.splitlines()[0] == "5 problems found in the recipe:"
    assert info.value.hint == "remove or fix each key, or drop --strict to only warn"
    with pytest.raises(RecipeProblems) as info:
        load_config("merge_method: linear\nmodels: [a]\ndype: x\n", strict=True)
    assert (
        info.value.message == "unknown key 'dype' is ignored. Did you mean 'dtype' or 'out_dtype'?"
    )


def test_stray_moe_key_in_a_merge_recipe_is_only_a_warning() -> None:
    cfg = load_config("merge_method: linear\nmodels: [a]\nexperts_per_token: 2\n")
    assert cfg.warnings == ("unknown key 'experts_per_token' is ignored.",)
    with pytest.raises(RecipeError) as info:
        load_config("merge_methd: linear\nmodels: [a]\nexperts: [b]\n")
    assert info.value.message.startswith("missing 'merge_method' (found 'merge_methd'")


def test_every_bad_layer_range_is_reported_together() -> None:
    text = (
        "merge_method: passthrough\nslices:\n"
        "  - sources: [{model: a, layer_range: [0, 8]}, {model: b, layer_range: [-1, 8]}]\n"
        "  - sources: [{model: a, layer_range: [4, 4]}]\n"
        "  - sources: [{model: a, layer_range: [8, 4]}]\n"
        "  - sources: [{model: a, layer_range: [0, 2]}, {model: b, layer_range: [0, 3]}]\n"
    )
    with pytest.raises(RecipeProblems) as info:
        load_config(text)
    assert info.value.problems == [
        "slices[0].sources[1].layer_range: [-1, 8] has a negative start; "
        "layer_range is half-open [start, end) with 0 <= start < end",
        "slices[1].sources[0].layer_range: [4, 4] selects no layers; "
        "layer_range is half-open [start, end), so [4, 5] selects layer 4",
        "slices[2].sources[0].layer_range: [8, 4] selects no layers; "
        "the start comes first: [4, 8] selects layers 4..7",
        "slices[3]: all sources of a slice must span the same number of layers "
        "(a [0, 2], b [0, 3]); make every layer_range the same length, or split the slice",
    ]
    assert info.value.hint == (
        "layer_range is half-open [start, end) with 0 <= start < end: [0, 8] selects layers 0..7"
    )
    # The planner checks them itself, knowing the layer counts.
    cfg = load_config(text, check_ranges=False)
    assert cfg.slices is not None and cfg.slices[0].sources[1].layer_range == (-1, 8)


@pytest.mark.parametrize(
    ("start", "end", "tail"),
    [
        (-1, 8, "has a negative start; layers of m are 0..31, so use [0, 8]"),
        (0, -1, "has a negative end; layers of m are 0..31, so use [0, 31]"),
        (-4, -1, "has a negative start and end; layers of m are 0..31, so use [28, 31]"),
        (-2, 40, "has a negative start; layers of m are 0..31, so use [0, 32]"),
        (40, -1, "has a negative end; layers of m are 0..31"),
    ],
)
def test_negative_range_with_layer_count_says_the_valid_range(
    start: int, end: int, tail: str
) -> None:
    assert range_problem("r", start, end, "m", 32) == f"r: [{start}, {end}] {tail}"


def test_valid_and_outside_ranges() -> None:
    assert range_problem("r", 0, 32, "m", 32) is None
    assert range_problem("r", 0, 8) is None
    assert range_problem("r", 30, 34, "m", 32) == (
        "r: layer_range [30, 34] is outside m, which has 32 layers (0..31)"
    )
    assert range_problem("r", 0, 1, "m", 0) == "r: [0, 1] selects layers of m, which has none"


_MOE = """\
base_model: org/base
gate_mode: hidden
dtype: bfloat16
experts:
  - source_model: org/coder
    positive_prompts: ["code"]
"""


@pytest.mark.parametrize(
    ("text", "message", "hint_start"),
    [
        (
            _MOE,
            "this is a mergekit-moe recipe (experts, gate_mode), not a merge recipe",
            "build it with `meldkit moe RECIPE OUT`",
        ),
        (
            "genome: {models: [a, b], merge_method: ties}\ntasks: [arc]\n",
            "this is a mergekit-evolve configuration (genome, tasks), not a merge recipe",
            "run the search with `meldkit evolve SEARCH --storage DIR`",
        ),
        (
            '{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}\n',
            "this is a model's config.json (architectures, model_type), not a merge recipe",
            "give the recipe YAML",
        ),
        (
            "- {name: a, merge_method: linear, models: [x]}\n"
            "- {name: b, merge_method: slerp, models: [a]}\n",
            "the recipe is a list of 2 merges: a, b, a multi-stage recipe; "
            "`meldkit merge` runs a single recipe",
            "use `meldkit multi RECIPE --out OUT --intermediate-dir DIR`",
        ),
    ],
)
def test_other_tools_files_are_named(text: str, message: str, hint_start: str) -> None:
    with pytest.raises(RecipeError) as info:
        load_config(text)
    assert info.value.message == message
    assert info.value.hint is not None and info.value.hint.startswith(hint_start)


def test_multi_document_files(tmp_path) -> None:
    stages = tmp_path / "stages.yaml"
    stages.write_text(
        "name: first\nmerge_method: linear\nmodels: [a, b]\n---\n"
        "name: final\nmerge_method: slerp\nbase_model: first\nmodels: [first, c]\n"
    )
    with pytest.raises(RecipeError) as info:
        load_config(stages)
    assert info.value.message == (
        f"{stages}: holds 2 YAML documents, a multi-stage (mergekit-multi) recipe of 2 merges: "
        "first, final; `meldkit merge` runs a single recipe"
    )
    assert info.value.hint == (
        f"use `meldkit multi {stages} --out OUT --intermediate-dir DIR` "
        "(`meldkit plan` shows the whole chain)"
    )
    with pytest.raises(RecipeError) as info:
        load_config("merge_method: linear\nmodels: [a]\n---\nfoo: 1\n")
    assert info.value.message == "recipe: holds 2 YAML documents; a recipe is one document"
