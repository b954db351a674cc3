"""TinyTasks fitness: the prompt pool and evaluator against the benchmark's own eval.py, the
splits, the verdict shortcut, and the normalized value."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from meldkit.errors import OptionError
from meldkit.evolve.fitness import tinytasks
from meldkit.evolve.fitness.tinytasks import (
    TASKS,
    TinyTasksFitness,
    eval_pool,
    evaluate_tinytasks,
    greedy_answers,
    judge_answers,
    prompts,
    task_answer,
)

from .conftest import Oracle


@pytest.fixture
def one_thread() -> Any:
    """torch on one CPU thread for the test (eval.py's own decoding is slow on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def load_eval_py(tinytasks_dir: Path) -> Any:
    spec = importlib.util.spec_from_file_location("tinytasks_eval", tinytasks_dir / "eval.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_fp32(tinytasks_dir: Path, name: str) -> Any:
    from transformers import AutoModelForCausalLM

    return (
        AutoModelForCausalLM.from_pretrained(tinytasks_dir / "models" / "fp32" / name)
        .float()
        .eval()
    )


def test_answers_of_each_task() -> None:
    assert task_answer("rev", "abcde") == "edcba"
    assert task_answer("srt", "31415") == "11345"
    assert task_answer("sft", "xyzab") == "abcde"
    assert task_answer("dup", "abc") == "aabbcc"


def test_pool_is_seeded_distinct_and_in_range() -> None:
    for task in TASKS:
        pool = eval_pool(task)
        assert len(pool) == len(set(pool)) == 500
        shortest, longest = (3, 6) if task == "dup" else (3, 8)
        assert all(shortest <= len(p) <= longest for p in pool)
    # The first payload follows from the seed alone: length first, then the symbols.
    rng = random.Random("tinytasks-eval-srt")
    length = rng.randint(3, 8)
    assert eval_pool("srt")[0] == "".join(rng.choice("0123456789") for _ in range(length))


def test_splits_do_not_overlap() -> None:
    report = prompts("rev", 200, "report")
    search = prompts("rev", 300, "search")
    assert report == eval_pool("rev")[:200] and search == eval_pool("rev")[200:]
    assert not set(report) & set(search)
    assert prompts("rev", 64, "search") == eval_pool("rev")[200:264]
    with pytest.raises(
        OptionError, match="^tinytasks: n must be between 1 and 300 for split 'search', got 301"
    ):
        prompts("rev", 301, "search")
    with pytest.raises(
        OptionError, match="^tinytasks: n must be between 1 and 200 for split 'report', got 201"
    ):
        evaluate_tinytasks(Oracle(()), n=201)
    with pytest.raises(OptionError, match="^tinytasks: unknown task 'revv'. Did you mean 'rev'"):
        evaluate_tinytasks(Oracle(()), n=8, tasks=["revv"])


def test_pool_matches_eval_py(tinytasks_dir: Path) -> None:
    eval_py = load_eval_py(tinytasks_dir)
    for task in TASKS:
        assert list(eval_pool(task)) == eval_py.eval_pool(task)
        for payload in eval_pool(task)[:50]:
            assert task_answer(task, payload) == eval_py.task_answer(task, payload)


def test_oracle_scores_exactly_its_skills() -> None:
    model = Oracle(skills=("rev", "dup"))
    assert evaluate_tinytasks(model, n=20, split="search") == {
        "rev": 1.0,
        "srt": 0.0,
        "sft": 0.0,
        "dup": 1.0,
        "mean": 0.5,
    }


def test_specials_decode_to_nothing_and_no_stop_is_wrong() -> None:
    # As in eval.py: a <pad> among the generated tokens is dropped when decoding, so the answer
    # still matches; an answer that never reaches '.' is wrong.
    assert evaluate_tinytasks(Oracle(TASKS, pad_first=True), n=10, tasks=["srt"]) == {
        "srt": 1.0,
        "mean": 1.0,
    }
    assert evaluate_tinytasks(Oracle(TASKS, never_stop=True), n=10, tasks=["srt"]) == {
        "srt": 0.0,
        "mean": 0.0,
    }


def test_wrong_rows_leave_the_batch() -> None:
    # 10 prompts of one task: a model wrong on all of them costs one forward pass per length.
    model = Oracle(skills=())
    payloads = prompts("sft", 10, "report")
    evaluate_tinytasks(model, n=10, split="report", tasks=["sft"])
    assert model.calls == len({len(p) for p in payloads})
    assert model.rows == 10


def test_verdicts_agree_with_full_greedy_decoding(tiny_llama: Any, one_thread: None) -> None:
    cases = [(f"{t}:{p}=", task_answer(t, p)) for t in TASKS for p in prompts(t, 12, "search")]
    oracle = Oracle(skills=("rev", "sft"), pad_first=True)
    for model in (tiny_llama, oracle):
        with torch.no_grad():
            full = greedy_answers(model, [text for text, _ in cases])
            verdicts = judge_answers(model, cases)
        assert verdicts == [a == answer for a, (_, answer) in zip(full, cases)]
    assert sum(verdicts) == 24


def test_threads_are_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "get_num_threads", lambda: state["threads"])
    monkeypatch.setattr(torch, "set_num_threads", lambda n: state.update(threads=n))
    state = {"threads": 3}
    before = 3
    seen: list[int] = []

    class Watch(Oracle):
        def forward(self, input_ids: torch.Tensor, use_cache: bool = False) -> Any:
            seen.append(torch.get_num_threads())
            return super().forward(input_ids, use_cache)

    evaluate_tinytasks(Watch(()), n=2, tasks=["rev"], threads=1)
    pinned, seen[:] = list(seen), []
    evaluate_tinytasks(Watch(()), n=2, tasks=["rev"], threads=None)
    assert set(pinned) == {1} and set(seen) == {before} and torch.get_num_threads() == before


def test_random_llama_is_deterministic_and_in_range(tiny_llama: Any) -> None:
    first = evaluate_tinytasks(tiny_llama, n=16, split="search")
    assert first == evaluate_tinytasks(tiny_llama, n=16, split="search")
    assert set(first) == {*TASKS, "mean"}
    assert all(0.0 <= v <= 1.0 for v in first.values())
    term = TinyTasksFitness(n=16)
    scores = term.score(tiny_llama, None)
    assert scores == {"tinytasks": first["mean"], **{f"tinytasks.{t}": first[t] for t in TASKS}}


def test_normalized_value(monkeypatch: pytest.MonkeyPatch) -> None:
    accuracies = {"rev": 0.5, "srt": 0.9, "sft": 0.2, "dup": 0.8}
    monkeypatch.setattr(
        tinytasks,
        "evaluate_tinytasks",
        lambda model, n, split, tasks, threads: {**{t: accuracies[t] for t in tasks}, "mean": 0.0},
    )
    term = TinyTasksFitness(n=64, normalize={"rev": 0.5, "srt": 1.0, "sft": 0.8, "dup": 1.0})
    scores = term.score(Oracle(()), None)
    # (0.5/0.5 + 0.9/1.0 + 0.2/0.8 + 0.8/1.0) / 4 = (1 + 0.9 + 0.25 + 0.8) / 4
    assert scores["tinytasks"] == pytest.approx(0.7375, abs=1e-12)
    assert scores["tinytasks.sft"] == 0.2
    only_two = TinyTasksFitness(n=64, tasks=("rev", "sft"), normalize={"rev": 0.5, "sft": 0.8})
    assert only_two.score(Oracle(()), None)["tinytasks"] == pytest.approx((1 + 0.25) / 2, abs=1e-12)


def test_finetunes_are_measured_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    measured: list[tuple[str, int, str]] = []

    def fake_finetune_accuracy(
        path: Path, task: str, n: int, split: str, device: Any, threads: Any
    ) -> float:
        measured.append((path.name, n, split))
        return {"rev": 0.5, "srt": 1.0, "sft": 0.8, "dup": 1.0}[task]

    monkeypatch.setattr(tinytasks, "_finetune_accuracy", fake_finetune_accuracy)
    term = TinyTasksFitness(n=10, finetunes={t: tmp_path / f"ft_{t}" for t in TASKS})
    oracle = Oracle(skills=("rev", "srt"))
    for _ in range(2):
        # rev 1/0.5 = 2, srt 1/1 = 1, sft 0, dup 0 -> 3 / 4
        assert term.score(oracle, None)["tinytasks"] == 0.75
    assert measured == [(f"ft_{t}", 10, "search") for t in TASKS]


def test_a_finetune_scoring_zero_cannot_normalize(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(tinytasks, "_finetune_accuracy", lambda *args: 0.0)
    term = TinyTasksFitness(n=4, tasks=("rev",), finetunes={"rev": tmp_path})
    with pytest.raises(
        Exception, match="the fine-tune for 'rev' scores 0 on its own task, so it cannot normalize"
    ):
        term.score(Oracle(()), None)


def test_report_split_gives_the_benchmarks_accuracies(tinytasks_dir: Path) -> None:
    # make.py recorded eval.py's n=200 accuracies of every fp32 model. A fine-tune's own task is
    # left to the slow test below (most of the time goes there); its stray hits on the other
    # tasks (ft_rev: srt 0.075) are what is checked here.
    recorded = json.loads((tinytasks_dir / "models" / "make_log.json").read_text())["acc"]
    for name in ("base", "ft_rev", "ft_srt", "ft_sft", "ft_dup"):
        tasks = [t for t in TASKS if name != f"ft_{t}"]
        got = evaluate_tinytasks(load_fp32(tinytasks_dir, name), n=200, split="report", tasks=tasks)
        assert {t: got[t] for t in tasks} == {t: recorded[name][t] for t in tasks}, name


def average_of_finetunes(tinytasks_dir: Path) -> Any:
    """A linear merge of the four fine-tunes, made in memory: a model that keeps some skills."""
    models = [load_fp32(tinytasks_dir, f"ft_{t}") for t in TASKS]
    merged = models[0]
    states = [m.state_dict() for m in models]
    merged.load_state_dict({k: sum(s[k] for s in states) / len(states) for k in states[0]})
    return merged


def test_merge_scores_as_in_eval_py(tinytasks_dir: Path, one_thread: None) -> None:
    eval_py = load_eval_py(tinytasks_dir)
    model = average_of_finetunes(tinytasks_dir)
    with torch.no_grad():
        expected = eval_py.evaluate(model, n=12)
    assert evaluate_tinytasks(model, n=12, split="report") == expected
    assert expected["dup"] > 0.5  # the case where rows stay in their batch to the end


@pytest.mark.slow
def test_every_fp32_model_scores_as_in_eval_py(tinytasks_dir: Path) -> None:
    eval_py = load_eval_py(tinytasks_dir)
    for name in ("base", "ft_rev", "ft_srt", "ft_sft", "ft_dup"):
        model = load_fp32(tinytasks_dir, name)
        with torch.no_grad():
            expected = eval_py.evaluate(model, n=200)
        assert evaluate_tinytasks(model, n=200, split="report") == expected, name
    model = average_of_finetunes(tinytasks_dir)
    with torch.no_grad():
        expected = eval_py.evaluate(model, n=200)
    assert evaluate_tinytasks(model, n=200, split="report") == expected
