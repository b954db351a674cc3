"""The search folder: history lines, state, torn lines after a kill, other searches refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meldkit.errors import OptionError
from meldkit.evolve.report import best_record, generation_stats, write_best_recipe, write_table
from meldkit.evolve.storage import Storage, config_hash


def record(index: int, generation: int, fitness: float) -> dict[str, object]:
    return {
        "index": index,
        "generation": generation,
        "genes": [0.5],
        "values": {"weight[g0,a]": 0.5},
        "fitness": fitness,
        "scores": {"fitness": fitness},
        "recipe": {
            "merge_method": "linear",
            "models": [{"model": "a", "parameters": {"weight": [0.1, 0.2]}}],
        },
    }


def test_history_round_trip_and_a_torn_last_line_is_dropped(tmp_path: Path) -> None:
    store = Storage(tmp_path / "s")
    assert store.open("h1", "text", restart=False) == {}
    store.append(record(0, 0, 0.5))
    store.append(record(1, 0, 0.7))
    with open(store.history_path, "a") as f:
        f.write('{"index": 2, "gener')  # killed mid-write
    again = Storage(tmp_path / "s").open("h1", "text", restart=False)
    assert sorted(again) == [0, 1]
    assert again[1]["fitness"] == 0.7
    store.append(record(2, 1, 0.1))
    assert [json.loads(x)["index"] for x in store.history_path.read_text().splitlines()] == [
        0,
        1,
        2,
    ]


def test_another_search_in_the_folder_is_refused_unless_restarted(tmp_path: Path) -> None:
    store = Storage(tmp_path)
    store.open("h1", "a", restart=False)
    store.append(record(0, 0, 0.5))
    store.write_state({"config_hash": "h1"})
    with pytest.raises(OptionError) as err:
        Storage(tmp_path).open("h2", "b", restart=False)
    assert (
        err.value.message == f"{tmp_path} holds another search (its search file or options differ)"
    )
    assert err.value.hint == "use another --storage folder, or --restart to start this one afresh"
    assert Storage(tmp_path).open("h2", "b", restart=True) == {}
    assert (tmp_path / "search.yaml").read_text() == "b"


def test_config_hash_depends_on_text_and_extras() -> None:
    assert config_hash("a", {"genes": 2}) == config_hash("a", {"genes": 2})
    assert config_hash("a", {"genes": 2}) != config_hash("a", {"genes": 3})
    assert config_hash("a", {}) != config_hash("b", {})


def test_generation_stats_and_the_first_best_wins_ties() -> None:
    history = [record(0, 0, 0.2), record(1, 0, 0.6), record(2, 1, 0.4), record(3, 1, 0.6)]
    stats = generation_stats(history)
    assert stats == [
        {
            "generation": 0,
            "evaluations": 2,
            "best": 0.6,
            "generation_best": 0.6,
            "mean": pytest.approx(0.4),
        },
        {
            "generation": 1,
            "evaluations": 4,
            "best": 0.6,
            "generation_best": 0.6,
            "mean": pytest.approx(0.5),
        },
    ]
    best = best_record(history)
    assert best is not None and best["index"] == 1


def test_best_recipe_is_a_plain_recipe_and_the_table_lists_generations(tmp_path: Path) -> None:
    import yaml

    history = [record(0, 0, 0.2), record(1, 1, 0.6)]
    write_best_recipe(tmp_path / "best.yaml", history[1], "search.yaml")
    text = (tmp_path / "best.yaml").read_text()
    assert text.startswith(
        "# meldkit evolve: best of the search search.yaml\n# candidate 1 (generation 1)"
    )
    assert yaml.safe_load(text) == history[1]["recipe"]
    write_table(tmp_path / "results.md", history, {"seed": 0})
    table = (tmp_path / "results.md").read_text()
    assert "| 1 | 2 | 0.6000 | 0.6000 | 0.6000 |" in table
    assert "| weight[g0,a] | 0.5000 |" in table


def test_a_nan_candidate_is_never_best_and_left_out_of_the_means() -> None:
    history = [record(0, 0, float("nan")), record(1, 0, 0.3), record(2, 1, float("nan"))]
    stats = generation_stats(history)
    assert stats[0]["best"] == 0.3 and stats[0]["mean"] == 0.3
    assert stats[1]["best"] == 0.3 and stats[1]["mean"] != stats[1]["mean"]  # NaN: nothing scored
    best = best_record(history)
    assert best is not None and best["index"] == 1
