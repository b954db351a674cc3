"""End-to-end searches on tiny models: outputs, the best recipe's score, resume after a kill,
Ray against serial, in memory against a temporary folder, the command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from meldkit.evolve import BackendOptions, load_search_config, run_search
from meldkit.testing import make_model_family

pytest.importorskip("transformers")
pytest.importorskip("cma")

# A smooth, deterministic fitness of the merged weights: how close one MLP matrix and the LM
# head come to a target, so different parameters give different scores.
FITNESS = """
import os
from pathlib import Path

def score(model, tokenizer):
    counter = os.environ.get("EVOLVE_TEST_COUNTER")
    if counter:
        path = Path(counter)
        calls = int(path.read_text()) + 1 if path.exists() else 1
        path.write_text(str(calls))
        if calls == int(os.environ.get("EVOLVE_TEST_KILL_AT", "0")):
            os.kill(os.getpid(), 9)
    w = model.model.layers[1].mlp.down_proj.weight
    h = model.lm_head.weight
    return -float((w - 0.02).pow(2).mean().detach()) - 0.5 * float((h + 0.01).pow(2).mean().detach())
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], Path]:
    root = tmp_path_factory.mktemp("evolve")
    base, fts = make_model_family(root, "llama", n=3, num_layers=4, dtype="float32")
    fitness = root / "fitness_fn.py"
    fitness.write_text(FITNESS)
    return base, fts, fitness


def search(models: tuple[Path, list[Path], Path], **changes: Any) -> dict[str, Any]:
    base, fts, fitness = models
    data: dict[str, Any] = {
        "genome": {
            "models": [str(f) for f in fts],
            "base_model": str(base),
            "merge_method": "ties",
            "layer_granularity": 2,
            "search": {"weight": [0.0, 1.5], "density": [0.2, 1.0]},
        },
        "fitness": [{"python": f"{fitness}:score"}],
        "budget": {"evaluations": 10, "population": 4},
        "seed": 3,
    }
    for key, value in changes.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return data


def lines(folder: Path) -> list[str]:
    return (folder / "history.jsonl").read_text().splitlines()


def test_a_search_leaves_history_state_best_recipe_table_and_plot(
    models: tuple[Path, list[Path], Path], tmp_path: Path
) -> None:
    info: list[str] = []
    result = run_search(load_search_config(search(models)), tmp_path, on_info=info.append)
    history = [json.loads(x) for x in lines(tmp_path)]
    assert [r["index"] for r in history] == list(range(10))
    assert [r["generation"] for r in history] == [0] * 4 + [1] * 4 + [2] * 2
    assert result.best is not None
    assert result.best["fitness"] == max(r["fitness"] for r in history)
    assert result.stop_reason == "budget of evaluations spent"
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["finished"] is True and state["evaluations"] == 10
    recipe = yaml.safe_load((tmp_path / "best_recipe.yaml").read_text())
    assert recipe == result.best["recipe"]
    assert len(recipe["models"][0]["parameters"]["weight"]) == 4  # one value per layer
    assert "| 2 | 10 |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "fitness.png").read_bytes()[:4] == b"\x89PNG"
    assert info[0].startswith("searching 12 genes (weight, density of ties, 2 layer groups)")
    assert info[1].startswith("generation 0: 4/10 evaluations, best ")
    assert "evaluations/min" in info[1]


def test_the_best_recipe_merged_with_meldkit_merge_scores_what_the_search_reported(
    models: tuple[Path, list[Path], Path], tmp_path: Path
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from meldkit import run_merge
    from meldkit.evolve.fitness import parse_fitness

    config = load_search_config(search(models))
    result = run_search(config, tmp_path / "s")
    assert result.best is not None
    run_merge(tmp_path / "s" / "best_recipe.yaml", tmp_path / "merged", quiet=True)
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"), dtype=torch.float32)
    torch.set_num_threads(1)  # the backend's threads per evaluator
    score = parse_fitness(config.fitness, base_dir=config.base_dir)(model.eval(), None)
    assert score["fitness"] == result.best["fitness"]


def test_in_memory_and_temporary_folder_candidates_score_the_same(
    models: tuple[Path, list[Path], Path], tmp_path: Path
) -> None:
    budget = {"budget": {"evaluations": 4}}
    memory = run_search(
        load_search_config(search(models, evaluation={"in_memory": True}, **budget)), tmp_path / "m"
    )
    folder = run_search(
        load_search_config(search(models, evaluation={"in_memory": False}, **budget)),
        tmp_path / "f",
    )
    assert lines(tmp_path / "m") == lines(tmp_path / "f")
    assert len(memory.history) == len(folder.history) == 4


@pytest.mark.parametrize(("wanted", "mode"), [("auto", "memory"), ("false", "folder")])
def test_a_plain_merge_is_scored_in_memory_unless_told_otherwise(
    models: tuple[Path, list[Path], Path], wanted: str, mode: str
) -> None:
    from meldkit.evolve.candidate import Candidate
    from meldkit.evolve.evaluate import CandidateEvaluator
    from meldkit.evolve.search import plan_search

    config = load_search_config(search(models, evaluation={"in_memory": wanted}))
    genome = plan_search(config)
    evaluator = CandidateEvaluator(config)
    genes = genome.initial()
    evaluator.evaluate(Candidate(0, 0, tuple(genes), genome.recipe(genes)))
    assert evaluator.mode == mode


def test_a_search_killed_mid_generation_resumes_to_the_same_history(
    models: tuple[Path, list[Path], Path], tmp_path: Path
) -> None:
    data = search(models)
    (tmp_path / "search.yaml").write_text(yaml.safe_dump(data))
    run_search(load_search_config(tmp_path / "search.yaml"), tmp_path / "whole")
    env = {
        **os.environ,
        "EVOLVE_TEST_COUNTER": str(tmp_path / "calls"),
        "EVOLVE_TEST_KILL_AT": "6",  # the second candidate of generation 1
    }
    cmd = [
        sys.executable,
        "-m",
        "meldkit",
        "evolve",
        str(tmp_path / "search.yaml"),
        "--storage",
        str(tmp_path / "killed"),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL
    assert len(lines(tmp_path / "killed")) == 5
    assert json.loads((tmp_path / "killed" / "state.json").read_text())["generations"] == 1
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "resuming after 5 recorded" in again.stderr
    assert lines(tmp_path / "killed") == lines(tmp_path / "whole")
    assert (tmp_path / "killed" / "best_recipe.yaml").read_text() == (
        tmp_path / "whole" / "best_recipe.yaml"
    ).read_text().replace(str(tmp_path / "whole"), str(tmp_path / "killed"))


def test_a_folder_of_another_search_is_refused(
    models: tuple[Path, list[Path], Path], tmp_path: Path
) -> None:
    from meldkit.errors import OptionError

    run_search(load_search_config(search(models, budget={"evaluations": 2})), tmp_path)
    with pytest.raises(OptionError, match="holds another search"):
        run_search(load_search_config(search(models, seed=4, budget={"evaluations": 2})), tmp_path)


def test_ray_with_two_local_workers_gives_the_serial_history(
    models: tuple[Path, list[Path], Path], tmp_path: Path
) -> None:
    pytest.importorskip("ray")
    config = load_search_config(search(models))
    run_search(
        config, tmp_path / "serial", backend=BackendOptions(kind="serial", cpus_per_worker=1)
    )
    ray = BackendOptions(kind="ray", workers=2, cpus_per_worker=1)
    result = run_search(config, tmp_path / "ray", backend=ray)
    assert lines(tmp_path / "ray") == lines(tmp_path / "serial")
    assert result.best is not None


def test_the_command_line_runs_a_search_and_reports_errors_in_one_line(
    models: tuple[Path, list[Path], Path], tmp_path: Path
) -> None:
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(search(models)))
    base = [sys.executable, "-m", "meldkit", "evolve", str(tmp_path / "s.yaml"), "--storage"]
    ok = subprocess.run(
        [*base, str(tmp_path / "out"), "--max-evaluations", "3", "--quiet", "--save-best"],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("best fitness ")
    assert f"recipe: {tmp_path / 'out' / 'best_recipe.yaml'}" in ok.stdout
    assert f"best model: {tmp_path / 'out' / 'best_model'}" in ok.stdout
    assert len(lines(tmp_path / "out")) == 3
    from meldkit import run_merge
    from meldkit.testing import read_model

    run_merge(tmp_path / "out" / "best_recipe.yaml", tmp_path / "again", quiet=True)
    saved, again = read_model(tmp_path / "out" / "best_model"), read_model(tmp_path / "again")
    assert saved.keys() == again.keys()
    assert all(saved[k].equal(again[k]) for k in saved)
    bad = search(models)
    bad["genome"]["layer_granularity"] = 3
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    err = subprocess.run(
        [
            sys.executable,
            "-m",
            "meldkit",
            "evolve",
            str(tmp_path / "bad.yaml"),
            "--storage",
            str(tmp_path / "b"),
        ],
        capture_output=True,
        text=True,
    )
    assert err.returncode == 2
    assert err.stderr.splitlines()[0] == (
        "error: genome.layer_granularity: 3 does not divide the model's 4 layers"
    )
    assert len(err.stderr.splitlines()) == 2  # and a hint


def test_candidates_with_nan_fitness_rank_last_and_the_search_goes_on(
    models: tuple[Path, list[Path], Path], tmp_path: Path
) -> None:
    nan_fitness = tmp_path / "nan_fn.py"
    nan_fitness.write_text(
        "calls = []\n\ndef score(model, tokenizer):\n    calls.append(1)\n"
        "    w = model.model.layers[1].mlp.down_proj.weight\n"
        "    return float('nan') if len(calls) % 3 == 0 else -float(w.pow(2).mean())\n"
    )
    config = load_search_config(search(models, fitness=[{"python": f"{nan_fitness}:score"}]))
    result = run_search(config, tmp_path / "s", backend=BackendOptions(kind="serial"))
    fitness = [r["fitness"] for r in result.history]
    assert len(fitness) == 10 and sum(f != f for f in fitness) == 3
    assert result.best is not None and result.best["fitness"] == max(f for f in fitness if f == f)
