"""reindex_vocab_tensor on a GPU gives exactly the CPU result (skipped without CUDA)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from meldkit.config.schema import TokenEmbedding, TokenizerConfig, TokenSource
from meldkit.tokenizer import VocabModel, build_vocabulary, reindex_vocab_tensor
from tests.tokenizer.helpers import make_tokenizer_folder

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_cuda_matches_cpu_large(tmp_path: Path) -> None:
    from meldkit.config.modelref import ModelPath, ModelRef

    n, hidden = 150_000, 1024
    base = make_tokenizer_folder(tmp_path / "b", vocab_size=n)
    other = make_tokenizer_folder(tmp_path / "o", vocab_size=n, extra_vocab=("extra_a", "extra_b"))
    models = [VocabModel("b", base, n), VocabModel(str(other), other, n)]
    tokens = {
        "tok_7": TokenEmbedding(
            TokenSource("model_token", ModelRef(ModelPath(str(other))), token_id=5), force=True
        )
    }
    cfg = TokenizerConfig(source="union", pad_to_multiple_of=64, tokens=tokens)
    v = build_vocabulary(cfg, models, "b")
    torch.manual_seed(0)
    cpu = {k: torch.randn(n, hidden).to(torch.bfloat16) for k in ("b", str(other))}
    expected = reindex_vocab_tensor(v, cpu)
    gpu = {k: t.cuda() for k, t in cpu.items()}
    reindex_vocab_tensor(v, gpu)  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    got = reindex_vocab_tensor(v, gpu)
    torch.cuda.synchronize()
    print(f"cuda reindex of 2 x ({n}, {hidden}) bf16: {time.perf_counter() - start:.4f} s")
    for k in cpu:
        assert got[k].device.type == "cuda"
        assert got[k].shape == (v.size, hidden)
        # kept and copied rows are bit-exact; padding means may differ in float32 summation order
        real = v.tokenizer_length
        assert torch.equal(got[k][:real].cpu(), expected[k][:real])
        torch.testing.assert_close(
            got[k][real:].cpu().float(), expected[k][real:].float(), atol=1e-2, rtol=0
        )
