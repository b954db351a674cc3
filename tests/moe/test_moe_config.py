"""The mergekit-moe recipe: parsing, MergeKit's validation (with its uniform_random fix)."""

from __future__ import annotations

import pytest

from meldkit.errors import RecipeError
from meldkit.moe.config import (
    config_problems,
    duplicate_prompt_warnings,
    load_moe_config,
    parse_moe_config,
)


def _recipe(**top: object) -> dict[str, object]:
    data: dict[str, object] = {
        "base_model": "org/base",
        "experts": [
            {"source_model": "org/a", "positive_prompts": ["code"]},
            {"source_model": "org/b", "positive_prompts": ["math"]},
        ],
    }
    data.update(top)
    return data


def test_defaults_are_mergekits() -> None:
    config = parse_moe_config(_recipe())
    assert (config.gate_mode, config.experts_per_token, config.dtype) == ("hidden", 2, None)
    assert config.shared_experts == () and config.architecture is None
    assert [str(e.source_model) for e in config.experts] == ["org/a", "org/b"]
    assert config_problems(config) == []


def test_expert_fields_and_lora_references() -> None:
    config = parse_moe_config(
        _recipe(
            experts=[
                {
                    "source_model": "org/a+org/adapter",
                    "positive_prompts": "one prompt",
                    "negative_prompts": ["no"],
                    "noise_scale": 0.01,
                    "residual_scale": 2,
                },
                {"source_model": "org/b", "positive_prompts": ["x"]},
            ]
        )
    )
    e = config.experts[0]
    assert (e.source_model.model.path, e.source_model.lora and e.source_model.lora.path) == (
        "org/a",
        "org/adapter",
    )
    assert (e.positive_prompts, e.negative_prompts) == (("one prompt",), ("no",))
    assert (e.noise_scale, e.residual_scale) == (0.01, 2.0)


def test_validation_reports_every_problem() -> None:
    config = parse_moe_config(
        _recipe(
            experts=[{"source_model": "org/a"}, {"source_model": "org/a"}],
            experts_per_token=3,
            gate_mode="hiden",
        )
    )
    assert config_problems(config) == [
        "gate_mode 'hiden' is not one of hidden, hidden_avg, hidden_last, cheap_embed, random, "
        "uniform_random. Did you mean 'hidden', 'hidden_avg' or 'hidden_last'?",
        "experts_per_token is 3 but the recipe has only 2 expert(s)",
        "experts[0] (org/a) has no positive_prompts; gate_mode 'hiden' makes the router from them",
        "experts[1] (org/a) has no positive_prompts; gate_mode 'hiden' makes the router from them",
        "every expert has the same prompts, so the router could not tell them apart",
        "every expert is the same model (org/a); the experts would be identical copies (pass "
        "--i-understand-this-is-not-useful-without-training to build it anyway)",
    ]


def test_experts_per_token_at_least_one() -> None:
    config = parse_moe_config(_recipe(experts_per_token=0))
    assert config_problems(config) == ["experts_per_token is 0; it must be at least 1"]


@pytest.mark.parametrize("mode", ["random", "uniform_random"])
def test_promptless_gate_modes_need_no_prompts(mode: str) -> None:
    # MergeKit exempts only "random"; uniform_random ignores the prompts just the same.
    config = parse_moe_config(
        _recipe(gate_mode=mode, experts=[{"source_model": "org/a"}, {"source_model": "org/b"}])
    )
    assert config_problems(config) == []


def test_identical_experts_allowed_by_the_flag() -> None:
    config = parse_moe_config(
        _recipe(gate_mode="random", experts=[{"source_model": "org/a"}, {"source_model": "org/a"}])
    )
    assert len(config_problems(config)) == 1
    assert config_problems(config, allow_identical_experts=True) == []


def test_unknown_keys_and_shared_prompts_are_warnings() -> None:
    data = _recipe(gate_mod="random")
    data["experts"] = [
        {"source_model": "org/a", "positive_prompts": ["code"], "noise": 1},
        {"source_model": "org/b", "positive_prompts": ["code"]},
        {"source_model": "org/c", "positive_prompts": ["math"]},
    ]
    config = parse_moe_config(data)
    assert config.warnings == (
        "recipe: unknown key 'gate_mod' is ignored. Did you mean 'gate_mode'?",
        "experts[0]: unknown key 'noise' is ignored. Did you mean 'noise_scale'?",
    )
    assert duplicate_prompt_warnings(config) == [
        "experts[0] and experts[1] have the same prompts: the router sends the same tokens to both"
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"experts": []}, "the MoE recipe has no 'base_model'"),
        (_recipe(experts=[{"positive_prompts": ["x"]}]), "experts[0]: missing 'source_model'"),
        (_recipe(experts_per_token="two"), "experts_per_token: must be an integer, got 'two'"),
        (
            _recipe(experts=[{"source_model": "a", "noise_scale": "big"}]),
            "experts[0].noise_scale: must be a number, got 'big'",
        ),
        (
            _recipe(experts=[{"source_model": "a", "positive_prompts": [1]}]),
            "experts[0].positive_prompts: must be a list of strings",
        ),
        (_recipe(dtype="float33"), "dtype: "),
    ],
)
def test_malformed_recipes(data: dict[str, object], message: str) -> None:
    with pytest.raises(RecipeError) as info:
        parse_moe_config(data)
    assert info.value.message.startswith(message)


def test_load_from_file_keeps_the_text(tmp_path) -> None:
    text = "base_model: org/base\nexperts:\n  - source_model: org/a\n    positive_prompts: [x]\n"
    path = tmp_path / "moe.yaml"
    path.write_text(text)
    assert load_moe_config(str(path)).source_text == text
    with pytest.raises(RecipeError, match="recipe file 'nope.yaml' does not exist"):
        load_moe_config("nope.yaml")
