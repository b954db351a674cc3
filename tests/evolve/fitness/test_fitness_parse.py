"""parse_fitness: every kind, weights, the weighted sum, and the text of every refusal."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from meldkit.errors import OptionError, RecipeError
from meldkit.evolve.fitness import (
    Fitness,
    FitnessTerm,
    PerplexityFitness,
    TinyTasksFitness,
    parse_fitness,
)
from meldkit.evolve.fitness.tinytasks import TASKS


class Constant:
    """A term that returns fixed values."""

    def __init__(
        self, name: str, weight: float, values: dict[str, float], needs_tokenizer: bool = True
    ) -> None:
        self.name, self.weight, self.values, self.needs_tokenizer = (
            name,
            weight,
            values,
            needs_tokenizer,
        )

    def score(self, model: Any, tokenizer: Any) -> dict[str, float]:
        return dict(self.values)


def test_weighted_sum() -> None:
    a = Constant("a", 2.0, {"a": 0.5, "a.x": 9.0}, needs_tokenizer=False)
    b = Constant("b", -0.25, {"b": 4.0})
    assert isinstance(a, FitnessTerm)
    fitness = Fitness([a, b])
    # 2 * 0.5 - 0.25 * 4 = 0; details pass through unweighted.
    assert fitness(None, None) == {"a": 0.5, "a.x": 9.0, "b": 4.0, "fitness": 0.0}
    assert fitness.needs_tokenizer and fitness.names == ["a", "b"]
    assert not Fitness([a]).needs_tokenizer
    assert Fitness([Constant("c", 0.5, {"c": 0.3})])(None, None)["fitness"] == pytest.approx(0.15)


def test_a_term_without_its_value() -> None:
    with pytest.raises(RecipeError) as caught:
        Fitness([Constant("a", 1.0, {"b": 1.0})])(None, None)
    assert (
        caught.value.message
        == "fitness term 'a' returned no value under its name (it returned 'b')"
    )


def test_every_kind_parses(tmp_path: Path) -> None:
    (tmp_path / "wiki.txt").write_text("some text")
    (tmp_path / "score.py").write_text("def score(model, tokenizer):\n    return 0.5\n")
    for task in TASKS:
        (tmp_path / f"ft_{task}").mkdir()
    fitness = parse_fitness(
        [
            {"tinytasks": {"n": 32, "finetunes": {t: f"ft_{t}" for t in TASKS}}, "weight": 2},
            {"perplexity": {"file": "wiki.txt", "context": 256}, "weight": 0.1},
            {"python": "score.py:score"},
        ],
        base_dir=tmp_path,
    )
    tiny, ppl, python = fitness.terms
    assert isinstance(tiny, TinyTasksFitness) and isinstance(ppl, PerplexityFitness)
    assert (tiny.n, tiny.split, tiny.weight, tiny.finetunes) == (
        32,
        "search",
        2.0,
        {t: tmp_path / f"ft_{t}" for t in TASKS},
    )
    assert (ppl.file, ppl.max_tokens, ppl.context, ppl.stride, ppl.weight) == (
        tmp_path / "wiki.txt",
        4096,
        256,
        256,
        0.1,
    )
    assert fitness.names == ["tinytasks", "perplexity:wiki.txt", "python:score.py:score"]
    assert python.weight == 1.0 and fitness.needs_tokenizer
    # Terms travel to Ray workers by pickle.
    assert pickle.loads(pickle.dumps(fitness)).terms == fitness.terms
    assert not parse_fitness([{"tinytasks": None}], base_dir=tmp_path).needs_tokenizer
    assert tiny.threads == 1
    assert parse_fitness({"tinytasks": {"n": 8}}, base_dir=tmp_path).names == [
        "tinytasks"
    ]  # one entry, no dash
    for threads in (None, 2):
        term = parse_fitness([{"tinytasks": {"threads": threads}}], base_dir=tmp_path).terms[0]
        assert isinstance(term, TinyTasksFitness) and term.threads == threads


def test_tinytasks_options(tmp_path: Path) -> None:
    term = parse_fitness(
        [
            {
                "tinytasks": {
                    "n": 200,
                    "split": "report",
                    "tasks": ["rev", "dup"],
                    "normalize": {"rev": 0.965, "dup": 1},
                }
            }
        ],
        base_dir=tmp_path,
    ).terms[0]
    assert isinstance(term, TinyTasksFitness)
    assert (term.n, term.split, term.tasks, term.normalize) == (
        200,
        "report",
        ("rev", "dup"),
        {"rev": 0.965, "dup": 1.0},
    )


def test_parsing_imports_no_torch() -> None:
    code = (
        "import sys; from pathlib import Path; from meldkit.evolve.fitness import parse_fitness\n"
        "parse_fitness([{'tinytasks': {'n': 8}}], base_dir=Path('.'))\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


BAD_ENTRIES: list[tuple[Any, str, str]] = [
    (
        [],
        "fitness must be a non-empty list of entries, got []",
        "each entry is one of {lm_eval: ...}, {perplexity: ...}, {python: ...}, {tinytasks: ...}, with an optional weight",
    ),
    (
        ["tinytasks"],
        "fitness[0]: expected a mapping such as {tinytasks: {n: 64}}, got 'tinytasks'",
        "each entry is one of",
    ),
    ([{"weight": 1}], "fitness[0]: names no fitness kind", "each entry is one of"),
    (
        [{"tinytask": {}}],
        "fitness[0]: unknown fitness kind 'tinytask'. Did you mean 'tinytasks'?",
        "each entry is one of",
    ),
    (
        [{"perplexty": {}}],
        "fitness[0]: unknown fitness kind 'perplexty'. Did you mean 'perplexity'?",
        "each entry is one of",
    ),
    (
        [{"tinytasks": {}, "perplexity": {}}],
        "fitness[0]: one kind per entry, got 'tinytasks', 'perplexity'",
        "write each kind as its own entry",
    ),
    (
        [{"tinytasks": {}, "n": 64}],
        "fitness[0]: unknown key 'n' beside 'tinytasks'",
        "an entry holds one kind and weight; put tinytasks's options under it: {tinytasks: {n: ...}}",
    ),
    (
        [{"tinytasks": {}, "weight": "high"}],
        "fitness[0]: weight must be a finite number, got 'high'",
        "for example weight: 0.5",
    ),
    (
        [{"tinytasks": {}, "weight": True}],
        "fitness[0]: weight must be a finite number, got True",
        "for example weight: 0.5",
    ),
    (
        [{"tinytasks": {}, "weight": float("nan")}],
        "fitness[0]: weight must be a finite number, got nan",
        "for example weight: 0.5",
    ),
    (
        [{"tinytasks": {}}, {"tinytasks": {"n": 8}}],
        "fitness[1]: scores 'tinytasks' again (as fitness[0] does)",
        "give each objective once; weight it instead of repeating it",
    ),
    (
        [{"tinytasks": [64]}],
        "fitness[0]: tinytasks: expected a mapping of options, got list",
        "write it as {tinytasks: {n: 64, split: search, tasks: [rev, srt, sft, dup]}}",
    ),
    (
        [{"tinytasks": {"nn": 64}}],
        "fitness[0]: tinytasks: unknown option 'nn'. Did you mean 'n'?",
        "its options are finetunes, n, normalize, split, tasks, threads",
    ),
    (
        [{"tinytasks": {"n": 301}}],
        "fitness[0]: tinytasks: n must be between 1 and 300, got 301",
        "use n: 64",
    ),
    (
        [{"tinytasks": {"n": 0}}],
        "fitness[0]: tinytasks: n must be between 1 and 300, got 0",
        "use n: 64",
    ),
    (
        [{"tinytasks": {"n": 201, "split": "report"}}],
        "fitness[0]: tinytasks: n must be between 1 and 200, got 201",
        "use n: 64",
    ),
    (
        [{"tinytasks": {"n": 6.5}}],
        "fitness[0]: tinytasks: n must be an integer, got 6.5",
        "for example n: 64",
    ),
    (
        [{"tinytasks": {"split": "test"}}],
        "fitness[0]: tinytasks: split must be 'search' or 'report', got 'test'.",
        "search scores pool[200:200+n], report the benchmark's pool[:n]",
    ),
    (
        [{"tinytasks": {"tasks": ["rev", "srot"]}}],
        "fitness[0]: tinytasks: unknown task 'srot'. Did you mean 'srt'?",
        "TinyTasks' tasks are rev, srt, sft, dup",
    ),
    (
        [{"tinytasks": {"tasks": ["add"]}}],
        "fitness[0]: tinytasks: unknown task 'add'.",
        "TinyTasks' tasks are rev, srt, sft, dup",
    ),
    (
        [{"tinytasks": {"tasks": []}}],
        "fitness[0]: tinytasks: tasks must be a non-empty list, got []",
        "for example tasks: [rev, srt, sft, dup]",
    ),
    (
        [{"tinytasks": {"tasks": ["rev", "rev"]}}],
        "fitness[0]: tinytasks: tasks lists a task twice: ['rev', 'rev']",
        "name each task once",
    ),
    (
        [{"tinytasks": {"tasks": ["rev"], "normalize": {"rev": 0.9, "dupp": 1}}}],
        "fitness[0]: tinytasks normalize: unknown task 'dupp'. Did you mean 'dup'?",
        "TinyTasks' tasks are",
    ),
    (
        [{"tinytasks": {"tasks": ["rev", "dup"], "normalize": {"rev": 0.9}}}],
        "fitness[0]: tinytasks: normalize has nothing for dup",
        "give normalize a value for every task scored",
    ),
    (
        [{"tinytasks": {"tasks": ["rev"], "normalize": {"rev": 0}}}],
        "fitness[0]: tinytasks: normalize.rev must be in (0, 1], got 0.0",
        "a fine-tune accuracy such as 0.995",
    ),
    (
        [{"tinytasks": {"tasks": ["rev"], "normalize": {"rev": "x"}}}],
        "fitness[0]: tinytasks: normalize.rev must be a finite number, got 'x'",
        "a fine-tune accuracy such as 0.995",
    ),
    (
        [{"tinytasks": {"normalize": {}, "finetunes": {}}}],
        "fitness[0]: tinytasks: give normalize or finetunes, not both",
        "finetunes measures what normalize states",
    ),
    (
        [{"tinytasks": {"threads": 0}}],
        "fitness[0]: tinytasks: threads must be at least 1, got 0",
        "use threads: 1",
    ),
    (
        [{"perplexity": {"file": "wiki.txt", "contxt": 5}}],
        "fitness[0]: perplexity: unknown option 'contxt'. Did you mean 'context'?",
        "its options are context, file, max_tokens, stride",
    ),
    (
        [{"perplexity": {}}],
        "fitness[0]: perplexity: file must name a text file, got None",
        "for example file: data/wiki.txt",
    ),
    (
        [{"perplexity": "wiki.txt"}],
        "fitness[0]: perplexity: expected a mapping of options, got str",
        "write it as {perplexity: {file: data/wiki.txt, max_tokens: 4096, context: 512}}",
    ),
    (
        [{"perplexity": {"file": "wiki.txt", "context": 8, "stride": 9}}],
        "fitness[0]: perplexity: stride must be between 1 and 8, got 9",
        "use stride: 8",
    ),
    (
        [{"perplexity": {"file": "wiki.txt", "max_tokens": 1}}],
        "fitness[0]: perplexity: max_tokens must be at least 2, got 1",
        "use max_tokens: 4096",
    ),
    (
        [{"python": "score"}],
        "fitness[0]: python: must be 'module:function', got 'score'",
        "write python: module:function or python: path/to/file.py:function",
    ),
    (
        [{"python": "score.py:"}],
        "fitness[0]: python: must be 'module:function', got 'score.py:'",
        "write python: module:function",
    ),
]


@pytest.mark.parametrize(
    ("entries", "message", "hint"), BAD_ENTRIES, ids=[m[:60] for _, m, _ in BAD_ENTRIES]
)
def test_bad_entries(tmp_path: Path, entries: Any, message: str, hint: str) -> None:
    (tmp_path / "wiki.txt").write_text("text")
    with pytest.raises(OptionError) as caught:
        parse_fitness(entries, base_dir=tmp_path)
    assert caught.value.message == message
    assert caught.value.hint is not None and caught.value.hint.startswith(hint)


def test_missing_files_name_the_resolved_path(tmp_path: Path) -> None:
    with pytest.raises(OptionError) as caught:
        parse_fitness(
            [{"tinytasks": None}, {"perplexity": {"file": "data/wiki.txt"}}], base_dir=tmp_path
        )
    assert (
        caught.value.message
        == f"fitness[1]: perplexity: file not found: {tmp_path / 'data' / 'wiki.txt'}"
    )
    assert caught.value.hint == f"relative paths start at {tmp_path}"
    with pytest.raises(OptionError) as caught:
        parse_fitness(
            [{"tinytasks": {"tasks": ["rev"], "finetunes": {"rev": "ft_rev"}}}], base_dir=tmp_path
        )
    assert (
        caught.value.message
        == f"fitness[0]: tinytasks: finetunes.rev: folder not found: {tmp_path / 'ft_rev'}"
    )
    with pytest.raises(OptionError) as caught:
        parse_fitness([{"python": "evals/score.py:score"}], base_dir=tmp_path)
    assert (
        caught.value.message
        == f"fitness[0]: python: file not found: {tmp_path / 'evals' / 'score.py'}"
    )
