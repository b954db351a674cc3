"""Tiny model families for the modifier tests, and a writer for hand-made fine-tunes."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from meldkit.testing import make_model_family, read_model


@pytest.fixture(scope="session")
def family(tmp_path_factory) -> tuple[Path, list[Path]]:
    """A 4-layer Llama base and two fine-tunes, float32 (untied head)."""
    root = tmp_path_factory.mktemp("modifiers")
    return make_model_family(root, "llama", n=2, num_layers=4, dtype="float32")


def write_like(model: Path, out: Path, tensors: Mapping[str, torch.Tensor]) -> Path:
    """A copy of ``model``'s folder with its weights replaced by ``tensors``."""
    shutil.copytree(model, out)
    for f in out.glob("*.safetensors"):
        f.unlink()
    index = out / "model.safetensors.index.json"
    if index.exists():
        index.unlink()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"))
    return out


def task_vector(model: Path, base: Path) -> dict[str, torch.Tensor]:
    m, b = read_model(model), read_model(base)
    return {k: m[k] - b[k] for k in b}
