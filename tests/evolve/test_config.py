"""The search file: keys, durations, paths, MergeKit's evolve configuration, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from meldkit.errors import RecipeError
from meldkit.evolve.config import load_search_config, parse_duration

GENOME = {"models": ["a", "b"], "merge_method": "task_arithmetic", "base_model": "base"}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(90, 90.0), ("45s", 45.0), ("30m", 1800.0), ("1h30m", 5400.0), ("2h", 7200.0), ("1.5m", 90.0)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text, "budget.wall_time") == seconds


def test_a_bad_duration_names_the_key() -> None:
    with pytest.raises(RecipeError) as err:
        parse_duration("soon", "budget.wall_time")
    assert err.value.message == "budget.wall_time: 'soon' is not a duration"
    assert err.value.hint == 'write seconds, or e.g. "30m", "1h30m"'


def test_a_full_search_file_round_trips_into_its_parts(tmp_path: Path) -> None:
    (tmp_path / "ft").mkdir()
    (tmp_path / "s.yaml").write_text(
        "genome:\n  models: [ft, hub/model]\n  base_model: ft\n  merge_method: ties\n"
        "  layer_granularity: 2\n  filters: [mlp]\n  search: {weight: [0, 2], density: {min: 0.1, max: 1, init: 0.5}}\n"
        "fitness: [{python: f.py:score}]\n"
        "budget: {evaluations: 50, wall_time: 10m, population: 6}\n"
        "optimizer: random\nsigma0: 0.25\nseed: 9\nevaluation: {in_memory: false}\n"
    )
    c = load_search_config(tmp_path / "s.yaml")
    assert c.genome.models == (str(tmp_path / "ft"), "hub/model")  # local paths made absolute
    assert c.genome.base_model == str(tmp_path / "ft")
    assert c.genome.filters == ("mlp",) and c.genome.layer_granularity == 2
    assert c.genome.search is not None and c.genome.search["density"].init == 0.5
    assert (c.budget.evaluations, c.budget.wall_time, c.budget.population) == (50, 600.0, 6)
    assert (c.optimizer, c.sigma0, c.seed) == ("random", 0.25, 9)
    assert c.evaluation.in_memory == "false"
    assert c.base_dir == tmp_path
    assert c.source_text.startswith("genome:")


def test_mergekits_evolve_configuration_becomes_lm_eval_fitness() -> None:
    c = load_search_config(
        {
            "genome": {**GENOME, "merge_method": "dare_ties", "layer_granularity": 8},
            "tasks": [
                "arc_easy",
                {"name": "gsm8k_train", "weight": 2.0, "metric": "exact_match,none"},
            ],
            "limit": 100,
            "num_fewshot": 5,
        }
    )
    assert c.fitness == [
        {
            "lm_eval": {
                "tasks": [
                    "arc_easy",
                    {"name": "gsm8k_train", "weight": 2.0, "metric": "exact_match,none"},
                ],
                "apply_chat_template": True,
                "limit": 100,
                "num_fewshot": 5,
            }
        }
    ]
    assert c.genome.layer_granularity == 8


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"genome": GENOME, "fitnes": []},
            "search file: unknown key 'fitnes'. Did you mean 'fitness'?",
        ),
        ({"fitness": [{"python": "m:f"}]}, "the search file has no genome:"),
        ({"genome": GENOME}, "the search file has no fitness: (nor MergeKit's tasks:)"),
        (
            {"genome": {**GENOME, "model": ["x"]}, "fitness": [1]},
            "genome: unknown key 'model'. Did you mean 'models' or 'base_model'?",
        ),
        (
            {"genome": {**GENOME, "models": []}, "fitness": [1]},
            "genome.models: expected a list of models to merge",
        ),
        (
            {"genome": GENOME, "fitness": [1], "budget": {"evaluations": 0}},
            "budget.evaluations: expected a whole number >= 1, got 0",
        ),
        (
            {"genome": GENOME, "fitness": [1], "optimizer": "cmaes"},
            "optimizer: 'cmaes' is not one of cma, random. Did you mean 'cma'?",
        ),
        ({"genome": GENOME, "fitness": [1], "sigma0": 2}, "sigma0: 2 is outside (0, 1]"),
        (
            {"genome": GENOME, "fitness": [1], "evaluation": {"in_memory": "maybe"}},
            "evaluation.in_memory: expected auto, true or false, got 'maybe'",
        ),
        (
            {"genome": GENOME, "fitness": [1], "evaluation": {"model_dtype": "fp8"}},
            "evaluation.model_dtype: 'fp8' is not one of float32, bfloat16, float16",
        ),
        (
            {"genome": {**GENOME, "search": {"weight": {"min": 0}}}, "fitness": [1]},
            "genome.search.weight: a searched parameter needs min and max",
        ),
    ],
)
def test_errors_name_the_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(RecipeError) as err:
        load_search_config(data)
    assert err.value.message == message
