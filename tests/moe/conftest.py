"""Tiny dense families (a base and three fine-tunes) to build MoE models from, per session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from meldkit.testing import make_model_family

Family = tuple[Path, list[Path]]


@pytest.fixture(scope="session")
def family(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Family]:
    """``family(arch)``: a 2-layer float32 base of ``arch`` and fine-tunes ft1..ft3, made once."""
    made: dict[str, Family] = {}

    def get(arch: str) -> Family:
        if arch not in made:
            root = tmp_path_factory.mktemp(f"moe-{arch}")
            made[arch] = make_model_family(root, arch, n=3, num_layers=2, dtype="float32")
        return made[arch]

    return get


def moe_recipe(base: Path, experts: list[Path], **top: Any) -> dict[str, Any]:
    """A recipe with one distinct prompt per expert (``top`` keys added or replaced)."""
    words = ["code", "math", "story", "poem"]
    recipe: dict[str, Any] = {
        "base_model": str(base),
        "gate_mode": "random",
        "experts": [
            {"source_model": str(e), "positive_prompts": [f"write {words[i]}"]}
            for i, e in enumerate(experts)
        ],
    }
    recipe.update(top)
    return recipe


def write_recipe(folder: Path, recipe: dict[str, Any]) -> Path:
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path
