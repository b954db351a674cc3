"""Reading a multi-stage recipe: the stage graph, its order, its errors, name resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from meldkit.errors import PlanError
from meldkit.multi import is_multi_stage, parse_stages
from meldkit.multi.stages import GRAPH_HINT, resolve_stage


def _problems(text: str) -> list[str]:
    with pytest.raises(PlanError) as info:
        parse_stages(text, "r.yaml")
    assert info.value.hint == GRAPH_HINT
    return info.value.problems


def test_stages_run_after_the_stages_they_read() -> None:
    graph = parse_stages(
        "merge_method: slerp\nbase_model: ab\nmodels: [{model: ab}, {model: cd}]\n"
        "parameters: {t: 0.5}\n---\n"
        "name: cd\nmerge_method: linear\nmodels: [{model: x/c}, {model: ab}]\n---\n"
        "name: ab\nmerge_method: linear\nmodels: [x/a, x/b]\n"
    )
    assert [s.label for s in graph.stages] == ["ab", "cd", "final"]
    assert [s.needs for s in graph.stages] == [(), ("ab",), ("ab", "cd")]
    assert [s.index for s in graph.stages] == [2, 1, 0]
    assert "name" not in graph.stages[0].data


def test_a_list_of_merges_is_a_multi_stage_recipe() -> None:
    graph = parse_stages(
        "- {name: a, merge_method: linear, models: [x/a]}\n"
        "- {merge_method: linear, models: [a, x/b]}\n"
    )
    assert [s.label for s in graph.stages] == ["a", "final"]
    assert graph.final.needs == ("a",)


def test_every_reference_form_is_resolved() -> None:
    graph = parse_stages(
        "name: a\nmerge_method: linear\nmodels: [x/a]\n---\n"
        "merge_method: passthrough\n"
        "slices:\n  - sources: [{model: a, layer_range: [0, 1]}]\n"
        "  - sources: [{model: a+loras/one, layer_range: [1, 2]}]\n"
        "tokenizer: {source: a, tokens: {'<x>': {source: {kind: model_token, model: a, token: y}}}}\n"
    )
    data = resolve_stage(graph.final, {"a": Path("/i/a")})
    assert data["slices"][0]["sources"][0]["model"] == "/i/a"
    assert data["slices"][1]["sources"][0]["model"] == {"model": "/i/a", "lora": "loras/one"}
    assert data["tokenizer"]["source"] == "/i/a"
    assert data["tokenizer"]["tokens"]["<x>"]["source"]["model"] == "/i/a"
    assert graph.final.data["slices"][0]["sources"][0]["model"] == "a"  # the stage is unchanged


def test_every_graph_problem_is_reported_at_once() -> None:
    problems = _problems(
        "name: a\nmerge_method: linear\nmodels: [{model: x/y}]\n---\n"
        "name: a\nmerge_method: linear\nmodels: [{model: x/z}]\n---\n"
        "name: c\nmerge_method: slerp\nbase_model: c\nmodels: [{model: x/y}, {model: c}]\n---\n"
        "name: d\nmerge_method: linear\nmodels: [{model: mergd_a}, {model: x/y}]\n"
    )
    assert problems == [
        "document 2: stage name 'a' is already used by document 1",
        "no final stage: every document has a name",
        "stage 'c' uses its own output",
        "stage 'd': unknown stage name 'mergd_a' (no stage has that name, no folder 'mergd_a' "
        "exists, and a hub id is written org/name).",
    ]


def test_cycles_and_misspelt_names() -> None:
    problems = _problems(
        "name: a\nmerge_method: linear\nmodels: [{model: b}, {model: x/y}]\n---\n"
        "name: b\nmerge_method: linear\nmodels: [{model: c}]\n---\n"
        "name: c\nmerge_method: linear\nmodels: [{model: a}]\n---\n"
        "name: merged\nmerge_method: linear\nmodels: [{model: x/y}]\n---\n"
        "merge_method: linear\nmodels: [{model: mergd}, {model: b}]\n"
    )
    assert problems == [
        "stage 'final': unknown stage name 'mergd' (no stage has that name, no folder 'mergd' "
        "exists, and a hub id is written org/name). Did you mean 'merged'?",
        "the stages form a cycle: a -> b -> c -> a",
    ]


def test_a_second_unnamed_stage_and_bad_names() -> None:
    problems = _problems(
        "merge_method: linear\nmodels: [x/a]\n---\n"
        "name: ''\nmerge_method: linear\nmodels: [x/a]\n---\n"
        "- not a recipe\n"
    )
    assert problems == [
        "document 2: name must be a non-empty string, got ''",
        "document 3: a stage must be a merge recipe (a mapping)",
        "document 2: a second stage without a name (document 1 is already the final stage)",
    ]


def test_which_files_are_multi_stage(tmp_path: Path) -> None:
    one = tmp_path / "one.yaml"
    one.write_text("merge_method: linear\nmodels: [x/a]\n")
    two = tmp_path / "two.yaml"
    two.write_text("name: a\nmerge_method: linear\nmodels: [x/a]\n---\nmerge_method: linear\n")
    junk = tmp_path / "junk.yaml"
    junk.write_text("a: 1\n---\nb: 2\n")
    assert [is_multi_stage(p) for p in (one, two, junk, tmp_path / "none.yaml")] == [
        False,
        True,
        False,
        False,
    ]
    assert not is_multi_stage("merge_method: linear\n---\nmerge_method: linear\n")  # not a file
