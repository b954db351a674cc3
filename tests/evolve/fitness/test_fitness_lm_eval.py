"""lm-eval fitness: the missing-package refusal, result extraction through a fake lm_eval, and
MergeKit's evolve tasks."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest

from meldkit.errors import OptionError, RecipeError
from meldkit.evolve.fitness import (
    LmEvalFitness,
    LmEvalTask,
    fitness_from_mergekit_tasks,
    parse_fitness,
)

RESULTS = {
    "results": {
        "arc_easy": {
            "alias": "arc_easy",
            "acc,none": 0.5,
            "acc_stderr,none": 0.01,
            "acc_norm,none": 0.55,
        },
        "hellaswag": {"alias": "hellaswag", "acc,none": 0.7, "acc_norm,none": 0.8},
    }
}


@pytest.fixture
def fake_lm_eval(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """lm_eval, lm_eval.models and lm_eval.models.huggingface stand-ins recording their calls."""
    seen: dict[str, Any] = {}

    class HFLM:
        def __init__(self, **kwargs: Any) -> None:
            seen["hflm"] = kwargs

    def simple_evaluate(**kwargs: Any) -> dict[str, Any]:
        seen["evaluate"] = kwargs
        return RESULTS

    root = types.ModuleType("lm_eval")
    root.simple_evaluate = simple_evaluate  # type: ignore[attr-defined]
    models = types.ModuleType("lm_eval.models")
    huggingface = types.ModuleType("lm_eval.models.huggingface")
    huggingface.HFLM = HFLM  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "lm_eval", root)
    monkeypatch.setitem(sys.modules, "lm_eval.models", models)
    monkeypatch.setitem(sys.modules, "lm_eval.models.huggingface", huggingface)
    return seen


def test_refused_without_lm_eval(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delitem(sys.modules, "lm_eval", raising=False)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    with pytest.raises(OptionError) as caught:
        parse_fitness(
            [{"tinytasks": None}, {"lm_eval": {"tasks": ["arc_easy"]}}], base_dir=tmp_path
        )
    assert caught.value.message == "fitness[1]: lm_eval needs the lm-eval package"
    assert caught.value.hint == "pip install 'meldkit[evolve]'"


def test_weighted_tasks(fake_lm_eval: dict[str, Any], tmp_path: Path) -> None:
    entry = {
        "lm_eval": {
            "tasks": ["arc_easy", {"name": "hellaswag", "weight": 0.5, "metric": "acc_norm,none"}],
            "limit": 100,
            "num_fewshot": 5,
            "batch_size": 4,
        },
        "weight": 2.0,
    }
    fitness = parse_fitness([entry], base_dir=tmp_path)
    term = fitness.terms[0]
    assert isinstance(term, LmEvalFitness)
    assert term.tasks == (
        LmEvalTask("arc_easy", 1.0, "acc,none"),
        LmEvalTask("hellaswag", 0.5, "acc_norm,none"),
    )
    model, tokenizer = object(), object()
    # 1.0 * 0.5 + 0.5 * 0.8 = 0.9, times the entry's weight 2 in "fitness".
    assert fitness(model, tokenizer) == {
        "lm_eval:arc_easy,hellaswag.arc_easy": 0.5,
        "lm_eval:arc_easy,hellaswag.hellaswag": 0.8,
        "lm_eval:arc_easy,hellaswag": pytest.approx(0.9),
        "fitness": pytest.approx(1.8),
    }
    assert fake_lm_eval["hflm"] == {"pretrained": model, "tokenizer": tokenizer, "batch_size": 4}
    called = fake_lm_eval["evaluate"]
    assert called["tasks"] == ["arc_easy", "hellaswag"]
    assert (
        called["limit"],
        called["num_fewshot"],
        called["apply_chat_template"],
        called["log_samples"],
    ) == (100, 5, False, False)


def test_one_task_has_no_details(fake_lm_eval: dict[str, Any], tmp_path: Path) -> None:
    fitness = parse_fitness(
        [{"lm_eval": {"tasks": ["hellaswag"], "metric": "acc_norm,none", "batch_size": "auto"}}],
        base_dir=tmp_path,
    )
    assert fitness(None, None) == {"lm_eval:hellaswag": 0.8, "fitness": 0.8}
    assert fake_lm_eval["hflm"]["batch_size"] == "auto"


def test_missing_results(fake_lm_eval: dict[str, Any]) -> None:
    term = LmEvalFitness(tasks=(LmEvalTask("arc_easy", metric="acc_nrm,none"),))
    with pytest.raises(RecipeError) as caught:
        term.score(None, None)
    assert (
        caught.value.message
        == "lm_eval:arc_easy: task 'arc_easy' has no metric 'acc_nrm,none'. Did you mean 'acc_norm,none' or 'acc,none'?"
    )
    assert caught.value.hint == "give metric: one of acc,none, acc_norm,none"
    with pytest.raises(RecipeError) as caught:
        LmEvalFitness(tasks=(LmEvalTask("arc_esy"),)).score(None, None)
    assert (
        caught.value.message
        == "lm_eval:arc_esy: lm_eval gave no results for task 'arc_esy'. Did you mean 'arc_easy'?"
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"tasks": []},
            "fitness[0]: lm_eval: tasks must be a non-empty list of lm-eval task names, got []",
        ),
        (
            {"tasks": ["a"], "limt": 5},
            "fitness[0]: lm_eval: unknown option 'limt'. Did you mean 'limit'?",
        ),
        (
            {"tasks": [{"name": "a", "wieght": 2}]},
            "fitness[0]: lm_eval tasks[0]: unknown option 'wieght'. Did you mean 'weight'?",
        ),
        ({"tasks": [{"weight": 2}]}, "fitness[0]: lm_eval tasks[0]: a task needs a name, got None"),
        ({"tasks": ["a", "a"]}, "fitness[0]: lm_eval: tasks names a task twice: ['a', 'a']"),
        ({"tasks": ["a"], "limit": 0}, "fitness[0]: lm_eval: limit must be positive, got 0"),
        (
            {"tasks": ["a"], "num_fewshot": -1},
            "fitness[0]: lm_eval: num_fewshot must be at least 0, got -1",
        ),
        (
            {"tasks": ["a"], "batch_size": "big"},
            "fitness[0]: lm_eval: batch_size must be an integer, got 'big'",
        ),
        (
            {"tasks": ["a"], "apply_chat_template": "yes"},
            "fitness[0]: lm_eval: apply_chat_template must be true or false, got 'yes'",
        ),
    ],
)
def test_bad_options(
    fake_lm_eval: dict[str, Any], tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(OptionError) as caught:
        parse_fitness([{"lm_eval": options}], base_dir=tmp_path)
    assert caught.value.message == message


def test_mergekit_tasks(fake_lm_eval: dict[str, Any], tmp_path: Path) -> None:
    entries = fitness_from_mergekit_tasks(
        ["arc_easy", {"name": "hellaswag", "weight": 0.5, "metric": "acc_norm,none"}],
        limit=10,
        num_fewshot=0,
        apply_chat_template=False,
    )
    assert entries == [
        {
            "lm_eval": {
                "tasks": [
                    "arc_easy",
                    {"name": "hellaswag", "weight": 0.5, "metric": "acc_norm,none"},
                ],
                "apply_chat_template": False,
                "limit": 10,
                "num_fewshot": 0,
            }
        }
    ]
    assert parse_fitness(entries, base_dir=tmp_path)(None, None)["fitness"] == pytest.approx(0.9)
    assert fitness_from_mergekit_tasks([{"name": "arc_easy"}]) == [
        {
            "lm_eval": {
                "tasks": [{"name": "arc_easy", "weight": 1.0, "metric": "acc,none"}],
                "apply_chat_template": True,
            }
        }
    ]
