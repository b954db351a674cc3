"""Shared fixtures: tiny model families made by meldkit.testing (cached per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meldkit.testing import make_model_family


@pytest.fixture(scope="session")
def llama_family(tmp_path_factory) -> tuple[Path, list[Path]]:
    """A 4-layer Llama base and two fine-tunes, float32."""
    root = tmp_path_factory.mktemp("llama")
    return make_model_family(root, "llama", n=2, num_layers=4, dtype="float32")
