"""Fixtures of the reliability tests (helpers live in helpers.py)."""

from __future__ import annotations

import pytest

from tests.reliability.helpers import Family, make_family


@pytest.fixture(scope="session")
def family(tmp_path_factory: pytest.TempPathFactory) -> Family:
    """A 4-layer float32 Llama base with two fine-tunes; tests must never write into it."""
    return make_family(tmp_path_factory.mktemp("reliability-family"))
