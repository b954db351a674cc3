"""Fixtures of the multi-stage tests: a tiny model family and a three-stage chain over it."""

from __future__ import annotations

from pathlib import Path

import pytest

from meldkit.testing import make_model_family


@pytest.fixture(scope="session")
def family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 2-layer Llama base and three fine-tunes (float32), by name."""
    root = tmp_path_factory.mktemp("multi-models")
    base, fts = make_model_family(root, "llama", n=3, num_layers=2, dtype="float32")
    return {"base": base, **{f"ft{i}": p for i, p in enumerate(fts, 1)}}


def stage_ab(m: dict[str, Path], weight: float = 0.5) -> str:
    return (
        f"name: ab\nmerge_method: linear\nmodels:\n"
        f"  - model: {m['ft1']}\n    parameters: {{weight: {weight}}}\n"
        f"  - model: {m['ft2']}\n    parameters: {{weight: {1 - weight}}}\n"
    )


def stage_c(m: dict[str, Path], weight: float = 0.7) -> str:
    return (
        f"name: c\nmerge_method: task_arithmetic\nbase_model: {m['base']}\nmodels:\n"
        f"  - model: {m['ft3']}\n    parameters: {{weight: {weight}}}\n"
    )


FINAL = "merge_method: slerp\nbase_model: ab\nmodels:\n  - model: ab\n  - model: c\nparameters: {t: 0.3}\n"


def chain_text(m: dict[str, Path], ab_weight: float = 0.5, c_weight: float = 0.7) -> str:
    """ab = linear(ft1, ft2); c = task_arithmetic(base, ft3); final = slerp(ab, c, t=0.3)."""
    return "---\n".join([stage_ab(m, ab_weight), stage_c(m, c_weight), FINAL])


@pytest.fixture
def chain_file(tmp_path: Path, family: dict[str, Path]) -> Path:
    path = tmp_path / "chain.yaml"
    path.write_text(chain_text(family))
    return path
