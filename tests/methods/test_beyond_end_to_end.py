"""The seven data-free methods beyond MergeKit, end to end through ``meldkit merge`` on tiny
Llama checkpoints: every output tensor is the method's formula applied to that tensor of the
inputs (so the engine hands over the right base, parameters and tensor names). That identical
inputs give the base back is checked per tensor for every method in test_properties.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from meldkit.cli.main import main
from meldkit.testing import make_model_family, read_model
from tests.methods.helpers import run_method

CASES: dict[str, dict[str, Any]] = {
    "tsv": {"alpha": 0.8},
    "iso_c": {"alpha": 1.2},
    "iso_cts": {"common_fraction": 0.5, "embeddings": "mean"},
    "wudi": {"lambda": 0.9, "steps": 30},  # few Adam steps: this checks the wiring
    "pcb": {"ratio": 0.3},
    "magmax": {"lambda": 0.7},
    "consensus": {"base_method": "ties", "k": 2},
}


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("beyond")
    return make_model_family(root, "llama", n=3, num_layers=2, hidden=16, intermediate=32)


def _merge(tmp_path: Path, method: str, base: Path, models: list[Path], params: dict) -> Path:
    recipe = {
        "merge_method": method,
        "base_model": str(base),
        "models": [{"model": str(m)} for m in models],
        "parameters": params,
        "dtype": "float32",
    }
    path = tmp_path / f"{method}.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    out = tmp_path / f"out-{method}"
    assert main(["merge", str(path), str(out), "--quiet"]) == 0
    return out


@pytest.mark.parametrize("method", sorted(CASES))
def test_merge_applies_the_formula_to_every_tensor(
    method: str, family: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    base, fts = family
    merged = read_model(_merge(tmp_path, method, base, fts, CASES[method]))
    inputs = [read_model(p) for p in [base, *fts]]
    assert sorted(merged) == sorted(inputs[0])
    for name, got in merged.items():
        want = run_method(
            method, [m[name].float() for m in inputs], 0, CASES[method], tensor_name=name
        )
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5, msg=name)
    assert not torch.equal(
        merged["model.layers.0.mlp.up_proj.weight"], inputs[0]["model.layers.0.mlp.up_proj.weight"]
    )
