"""Python-function fitness: file and module forms, return values, and every refusal."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from meldkit.errors import OptionError, RecipeError
from meldkit.evolve.fitness import PythonFitness, parse_fitness

SCORES = """
calls = []

def score(model, tokenizer):
    calls.append((model, tokenizer))
    return model * 2 + tokenizer

def details(model, tokenizer):
    return {"score": 0.75, "exact": 3, "loss": 1.5}

def words(model, tokenizer):
    return "good"

def no_score(model, tokenizer):
    return {"exact": 1}

def flag(model, tokenizer):
    return True

threshold = 0.5
"""


def term_of(tmp_path: Path, spec: str, weight: float = 1.0) -> PythonFitness:
    (tmp_path / "evals").mkdir(exist_ok=True)
    (tmp_path / "evals" / "scores.py").write_text(SCORES)
    term = parse_fitness([{"python": spec, "weight": weight}], base_dir=tmp_path).terms[0]
    assert isinstance(term, PythonFitness)
    return term


def test_file_form_scores_and_weights(tmp_path: Path) -> None:
    term = term_of(tmp_path, "evals/scores.py:score", weight=0.5)
    assert term.name == "python:evals/scores.py:score" and term.module == str(
        tmp_path / "evals" / "scores.py"
    )
    assert term.score(0.25, 1.0) == {"python:evals/scores.py:score": 1.5}
    fitness = parse_fitness([{"python": "evals/scores.py:score", "weight": 0.5}], base_dir=tmp_path)
    assert fitness(0.25, 1.0) == {"python:evals/scores.py:score": 1.5, "fitness": 0.75}


def test_dict_return_gives_details(tmp_path: Path) -> None:
    term = term_of(tmp_path, "evals/scores.py:details")
    assert term.score(None, None) == {
        "python:evals/scores.py:details": 0.75,
        "python:evals/scores.py:details.exact": 3.0,
        "python:evals/scores.py:details.loss": 1.5,
    }


def test_module_form(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_fitness_mod.py").write_text(SCORES)
    monkeypatch.syspath_prepend(str(tmp_path))
    term = parse_fitness([{"python": "my_fitness_mod:score"}], base_dir=Path("/"))
    assert term(3, 1) == {"python:my_fitness_mod:score": 7.0, "fitness": 7.0}


def test_travels_to_another_process_by_name(tmp_path: Path) -> None:
    term = term_of(tmp_path, "evals/scores.py:score")
    copy = pickle.loads(pickle.dumps(term))
    assert copy._callable is None and copy.score(1, 1) == {"python:evals/scores.py:score": 3.0}


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("words", "fitness[0]: python {m}:words returned str 'good', not a number"),
        ("flag", "fitness[0]: python {m}:flag returned bool True, not a number"),
        (
            "no_score",
            "fitness[0]: python {m}:no_score returned a dict without 'score' (it has exact)",
        ),
    ],
)
def test_non_numeric_returns(tmp_path: Path, function: str, message: str) -> None:
    term = term_of(tmp_path, f"evals/scores.py:{function}")
    with pytest.raises(RecipeError) as caught:
        term.score(None, None)
    assert caught.value.message == message.format(m=tmp_path / "evals" / "scores.py")
    assert (
        caught.value.hint == "return a number (higher is better) or a dict like {'score': 0.8, ...}"
    )


def test_missing_or_uncallable_function(tmp_path: Path) -> None:
    path = tmp_path / "evals" / "scores.py"
    with pytest.raises(OptionError) as caught:
        term_of(tmp_path, "evals/scores.py:scor")
    assert (
        caught.value.message
        == f"fitness[0]: python: {path} has no function 'scor'. Did you mean 'score' or 'no_score'?"
    )
    assert caught.value.hint == "define def scor(model, tokenizer) -> float in it"
    with pytest.raises(OptionError) as caught:
        term_of(tmp_path, "evals/scores.py:threshold")
    assert (
        caught.value.message == f"fitness[0]: python: {path} has float (not callable) 'threshold'."
    )


def test_import_errors(tmp_path: Path) -> None:
    with pytest.raises(OptionError) as caught:
        parse_fitness([{"python": "no_such_fitness_module:score"}], base_dir=tmp_path)
    assert caught.value.message == (
        "fitness[0]: python: cannot import 'no_such_fitness_module': "
        "ModuleNotFoundError: No module named 'no_such_fitness_module'"
    )
    assert (
        caught.value.hint
        == "put its folder on PYTHONPATH, or name the file: python: path/to/file.py:function"
    )
    (tmp_path / "broken.py").write_text("import no_such_dependency_here\n")
    with pytest.raises(OptionError) as caught:
        parse_fitness([{"tinytasks": None}, {"python": "broken.py:score"}], base_dir=tmp_path)
    assert caught.value.message == (
        f"fitness[1]: python: {tmp_path / 'broken.py'} failed to load: "
        "ModuleNotFoundError: No module named 'no_such_dependency_here'"
    )
    assert caught.value.hint == "run python on that file to see the full error"
