"""Fixtures for the tokenizer tests (see helpers.py for the folder layout)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("tokenizers")

from tests.tokenizer.helpers import make_tokenizer_folder  # noqa: E402


@pytest.fixture
def tok_models(tmp_path: Path) -> dict[str, Path]:
    """The three MergeKit fixture tokenizers: base (64), chatml (66), padded (64 + 4 unused)."""
    return {
        "base": make_tokenizer_folder(tmp_path / "base"),
        "chatml": make_tokenizer_folder(tmp_path / "chatml", added=("<|im_start|>", "<|im_end|>")),
        "padded": make_tokenizer_folder(
            tmp_path / "padded",
            added=tuple(f"<UNUSED_{i}>" for i in range(4)),
            added_special=False,
            model_vocab_size=64,
        ),
    }


@pytest.fixture
def vocab_models(tok_models: dict[str, Path]) -> list:
    """VocabModels for the fixture tokenizers, keyed like the engine keys them (str(ModelRef))."""
    from meldkit.tokenizer import VocabModel

    sizes = {"base": 64, "chatml": 66, "padded": 64}
    return [
        VocabModel(str(tok_models[n]), tok_models[n], sizes[n])
        for n in ("base", "chatml", "padded")
    ]
