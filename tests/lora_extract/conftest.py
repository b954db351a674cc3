"""Fixtures for LoRA extraction: a tiny base, a generic fine-tune, and a fine-tune whose every
linear delta has a known rank."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from meldkit.testing import make_tiny_model, read_model


def known_rank(name: str) -> int:
    """The rank of the synthetic delta of linear weight ``name`` (1, 2 or 3)."""
    return 1 + sum(name.encode()) % 3


def make_low_rank_finetune(base: Path, out: Path, seed: int = 7) -> Path:
    """``base + U_k V_k^T`` for every 2-D weight but the embeddings (k from :func:`known_rank`),
    norms shifted by 0.01; written as float32 like the base, config and tokenizer copied."""
    out.mkdir(parents=True)
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, value in read_model(base).items():
        if value.dim() == 2 and "embed" not in name and "lm_head" not in name:
            k = known_rank(name)
            u = torch.randn(value.shape[0], k, generator=gen)
            v = torch.randn(value.shape[1], k, generator=gen)
            value = value + 0.02 * u @ v.T
        elif value.dim() == 1:
            value = value + 0.01
        tensors[name] = value.contiguous()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    for f in base.iterdir():
        if f.suffix == ".json" and f.name != "model.safetensors.index.json":
            (out / f.name).write_bytes(f.read_bytes())
    return out


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(base, generic fine-tune, low-rank fine-tune): a 2-layer float32 Llama, hidden 32."""
    root = tmp_path_factory.mktemp("extract")
    kw = dict(num_layers=2, hidden=32, intermediate=48, vocab=64, dtype="float32")
    base = make_tiny_model(root / "base", "llama", tie_embeddings=False, **kw)
    tuned = make_tiny_model(root / "ft", base=base, seed=3)
    low = make_low_rank_finetune(base, root / "low")
    return base, tuned, low
