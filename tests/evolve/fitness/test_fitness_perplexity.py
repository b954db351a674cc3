"""Perplexity fitness: windows, and the NLL of a model whose predictions are fixed by hand."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from meldkit.errors import InputError
from meldkit.evolve.fitness import parse_fitness
from meldkit.evolve.fitness.perplexity import PerplexityFitness, windows


class LetterTokenizer:
    """'a' -> 0, 'b' -> 1, ...; counts how many characters it was asked to tokenize."""

    def __init__(self) -> None:
        self.chars = 0

    def __call__(self, text: str) -> dict[str, list[int]]:
        self.chars += len(text)
        return {"input_ids": [ord(c) - ord("a") for c in text]}


class PositionalModel(torch.nn.Module):
    """Predicts from the position inside its input alone: position i puts probability 1/2 on
    token (i + 1) % 4 and 1/6 on each other token (vocabulary of 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.inputs: list[list[int]] = []

    def forward(self, input_ids: torch.Tensor, use_cache: bool = False) -> SimpleNamespace:
        self.inputs.append(input_ids[0].tolist())
        length = input_ids.shape[1]
        probs = torch.full((1, length, 4), 1 / 6)
        probs[0, torch.arange(length), (torch.arange(length) + 1) % 4] = 1 / 2
        return SimpleNamespace(
            logits=probs.log().to(torch.bfloat16 if length == 3 else torch.float32)
        )


def term(tmp_path: Path, text: str, **options: Any) -> PerplexityFitness:
    (tmp_path / "text.txt").write_text(text)
    fitness = parse_fitness([{"perplexity": {"file": "text.txt", **options}}], base_dir=tmp_path)
    found = fitness.terms[0]
    assert isinstance(found, PerplexityFitness)
    return found


def test_windows() -> None:
    # Disjoint windows: the first token of each has no context and is not scored.
    assert windows(10, 4, 4) == [(0, 1, 4), (4, 5, 8), (8, 9, 10)]
    # Overlapping windows: every token after the first is scored once.
    assert windows(8, 4, 2) == [(0, 1, 4), (2, 4, 6), (4, 6, 8)]
    assert windows(5, 4, 4) == [(0, 1, 4)]  # the lone last token cannot be scored
    assert windows(3, 512, 512) == [(0, 1, 3)]


def test_disjoint_windows_golden(tmp_path: Path) -> None:
    # "abcdabcd" = 0 1 2 3 0 1 2 3; windows [0,4) and [4,8). In each, positions 0..2 predict
    # tokens 1, 2, 3 with probability 1/2: mean NLL ln 2.
    scores = term(tmp_path, "abcdabcd", context=4).score(PositionalModel(), LetterTokenizer())
    assert scores == {
        "perplexity:text.txt": pytest.approx(-math.log(2)),
        "perplexity:text.txt.ppl": pytest.approx(2.0),
    }


def test_overlapping_windows_golden(tmp_path: Path) -> None:
    # stride 2: windows [0,4) scoring 1,2,3 (right, 1/2 each); [2,6) scoring 4,5 from positions
    # 1,2, which predict 2,3 but the tokens are 0,1 (1/6 each); [4,8) scoring 6,7 from positions
    # 1,2, predicting 2,3 = the tokens (1/2 each). Mean NLL = (5 ln 2 + 2 ln 6) / 7.
    model = PositionalModel()
    scores = term(tmp_path, "abcdabcd", context=4, stride=2).score(model, LetterTokenizer())
    nll = (5 * math.log(2) + 2 * math.log(6)) / 7
    assert scores["perplexity:text.txt"] == pytest.approx(-nll, abs=1e-6)
    assert scores["perplexity:text.txt.ppl"] == pytest.approx(math.exp(nll), rel=1e-6)
    assert model.inputs == [[0, 1, 2, 3], [2, 3, 0, 1], [0, 1, 2, 3]]


def test_max_tokens_cuts_the_text(tmp_path: Path) -> None:
    # The first 7 tokens: windows [0,4) (1,2,3 right) and [4,7) (5,6 right, in bfloat16 logits).
    model = PositionalModel()
    scores = term(tmp_path, "abcdabcdabcd", context=4, max_tokens=7).score(model, LetterTokenizer())
    assert scores["perplexity:text.txt"] == pytest.approx(-math.log(2), abs=1e-2)
    assert model.inputs == [[0, 1, 2, 3], [0, 1, 2]]


def test_tokenizes_only_a_prefix_of_a_big_file(tmp_path: Path) -> None:
    fitness = term(tmp_path, "abcd" * 100_000, max_tokens=10)
    tokenizer = LetterTokenizer()
    assert fitness.token_ids(tokenizer) == [0, 1, 2, 3] * 2 + [0, 1]
    assert tokenizer.chars == 8 * (10 + 64)
    assert fitness.token_ids(tokenizer) is fitness.token_ids(
        tokenizer
    )  # kept for the same tokenizer
    assert tokenizer.chars == 8 * (10 + 64)


def test_too_short_a_text(tmp_path: Path) -> None:
    with pytest.raises(
        InputError,
        match=r"perplexity:text.txt: .*text.txt has 1 token\(s\); perplexity needs at least 2",
    ):
        term(tmp_path, "a").score(PositionalModel(), LetterTokenizer())


def test_real_llama_runs(tmp_path: Path, tiny_llama: Any) -> None:
    fitness = term(tmp_path, "rev:abc=cba." * 40, max_tokens=300, context=64)

    def tokenizer(text: str) -> dict[str, list[int]]:
        # TinyTasks' ids: <s> is 1, then a-z, 0-9 and ":=.+" from 4.
        return {
            "input_ids": [1]
            + [4 + "abcdefghijklmnopqrstuvwxyz0123456789:=.+".index(c) for c in text]
        }

    scores = fitness.score(tiny_llama, tokenizer)
    # A random model over 44 symbols is close to uniform: perplexity near 44.
    assert 20 < scores["perplexity:text.txt.ppl"] < 90
    assert scores["perplexity:text.txt"] == pytest.approx(
        -math.log(scores["perplexity:text.txt.ppl"])
    )
