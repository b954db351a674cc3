"""Fixtures of the fitness tests: a tiny random Llama, an oracle that solves TinyTasks, and the
TinyTasks folder when this machine has it (``MELDKIT_TINYTASKS`` or ``../shared/tinytasks``)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from meldkit.evolve.fitness.tinytasks import task_answer

REPO = Path(__file__).resolve().parents[3]
SYMBOLS = "abcdefghijklmnopqrstuvwxyz0123456789:=.+"  # ids 4..43; 0-3 are <pad> <s> </s> <unk>


def find_tinytasks() -> Path | None:
    """The TinyTasks folder, or None where this machine has none (CI)."""
    candidates = [
        os.environ.get("MELDKIT_TINYTASKS"),
        REPO.parent / "shared" / "tinytasks",
        REPO.parents[1] / "shared" / "tinytasks",
    ]
    for candidate in candidates:
        if (
            candidate
            and (Path(candidate) / "eval.py").is_file()
            and (Path(candidate) / "models" / "fp32").is_dir()
        ):
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def tinytasks_dir() -> Path:
    found = find_tinytasks()
    if found is None:
        pytest.skip("TinyTasks (../shared/tinytasks) is not on this machine")
    return found


@pytest.fixture(scope="session")
def tiny_llama() -> Any:
    """A random 1-layer Llama over TinyTasks' 44-symbol vocabulary (hidden 16), in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=44,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


class Oracle(torch.nn.Module):
    """A causal-LM stand-in that reads ``<s>task:payload=`` and writes the answer it is told to.

    ``skills`` are the tasks it answers right; on the others it writes ``wrong`` (one symbol,
    then '.'). ``pad_first`` makes it write a <pad> before each answer (decoded to nothing, so
    still right); ``never_stop`` writes the answer and then 'a' forever. ``calls`` counts
    forward passes and ``rows`` the batch rows they carried.
    """

    def __init__(
        self, skills: tuple[str, ...], pad_first: bool = False, never_stop: bool = False
    ) -> None:
        super().__init__()
        self.skills = skills
        self.pad_first = pad_first
        self.never_stop = never_stop
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # so next(parameters()) gives a device
        self.calls = 0
        self.rows = 0

    def forward(self, input_ids: torch.Tensor, use_cache: bool = False) -> SimpleNamespace:
        self.calls += 1
        self.rows += input_ids.shape[0]
        logits = torch.zeros(*input_ids.shape, 44)
        for b, row in enumerate(input_ids.tolist()):
            assert row[0] == 1  # BOS
            written_ids = row[1:]
            text = "".join(SYMBOLS[i - 4] for i in written_ids if i >= 4)
            task, rest = text.split(":", 1)
            payload, written = rest.split("=", 1)
            steps = len(written_ids) - len(task) - len(payload) - 2
            answer = (task_answer(task, payload) if task in self.skills else "z") + (
                "a" * 99 if self.never_stop else "."
            )
            if self.pad_first and steps == 0:
                logits[b, -1, 0] = 1.0
                continue
            logits[b, -1, 4 + SYMBOLS.index(answer[min(len(written), len(answer) - 1)])] = 1.0
        return SimpleNamespace(logits=logits)
