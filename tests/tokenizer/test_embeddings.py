"""reindex_vocab_tensor: every fallback rule with golden rows (spec §5 PermutedVocabulary)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from meldkit.config.modelref import ModelPath, ModelRef
from meldkit.config.schema import TokenEmbedding, TokenizerConfig, TokenSource
from meldkit.errors import PlanError, RecipeError
from meldkit.tokenizer import (
    VocabModel,
    build_vocabulary,
    reindex_vocab_tensor,
    truncate_vocab_tensors,
)
from tests.tokenizer.helpers import make_tokenizer_folder


def ref(folder: Path) -> ModelRef:
    return ModelRef(ModelPath(str(folder)))


def rows(n: int, offset: float, hidden: int = 4) -> torch.Tensor:
    """Row i is (offset + i) everywhere: every row's origin is readable from its value."""
    return (torch.arange(n, dtype=torch.float32)[:, None] + offset).expand(n, hidden).clone()


@pytest.fixture
def three(tmp_path: Path) -> dict[str, Path]:
    """base (8 tokens), a (8 + x, y), c (8 + y, z), with x, y, z ordinary tokens."""
    return {
        "base": make_tokenizer_folder(tmp_path / "base", vocab_size=8),
        "a": make_tokenizer_folder(tmp_path / "a", vocab_size=10, extra_vocab=("x", "y")),
        "c": make_tokenizer_folder(tmp_path / "c", vocab_size=10, extra_vocab=("y", "z")),
    }


def build(three: dict[str, Path], **kw) -> tuple:  # type: ignore[no-untyped-def]
    models = [VocabModel(str(three["base"]), three["base"], 8), VocabModel(str(three["a"]), three["a"], 10),
              VocabModel(str(three["c"]), three["c"], 10)]  # fmt: skip
    v = build_vocabulary(
        TokenizerConfig(source=kw.pop("source", "union"), **kw), models, str(three["base"])
    )
    tensors = {
        str(three["base"]): rows(8, 0.0),
        str(three["a"]): rows(10, 100.0),
        str(three["c"]): rows(10, 200.0),
    }
    return v, tensors


def keyed(three: dict[str, Path], out: dict) -> dict:  # type: ignore[type-arg]
    return {name: out[str(folder)] for name, folder in three.items()}


def test_fallback_rules(three: dict[str, Path]) -> None:
    v, tensors = build(three)
    assert v.tokens[8:] == ["x", "y", "z"]
    out = keyed(three, reindex_vocab_tensor(v, tensors, axis=0))
    for t in out.values():
        assert t.shape == (11, 4)
    # shared tokens: every model keeps its own rows
    assert torch.equal(out["base"][:8], rows(8, 0.0))
    assert torch.equal(out["a"][:8], rows(8, 100.0))
    # x: only in a (its id 8) -> a's row everywhere
    assert torch.equal(out["base"][8], torch.full((4,), 108.0))
    assert torch.equal(out["c"][8], torch.full((4,), 108.0))
    # y: in a (id 9) and c (id 8), not in base -> the mean for the base; a and c keep theirs
    assert torch.equal(out["base"][9], torch.full((4,), (109.0 + 208.0) / 2))
    assert torch.equal(out["a"][9], torch.full((4,), 109.0))
    assert torch.equal(out["c"][9], torch.full((4,), 208.0))
    # z: only in c (id 9)
    assert torch.equal(out["a"][10], torch.full((4,), 209.0))


def test_base_row_preferred(three: dict[str, Path]) -> None:
    # a model that lacks a base token (base vocab size bigger than a's rows) gets the base row
    v, tensors = build(three)
    tensors[str(three["a"])] = rows(5, 100.0)  # rows 5..7 "missing" from a
    out = keyed(three, reindex_vocab_tensor(v, tensors))
    assert torch.equal(out["a"][6], torch.full((4,), 6.0))  # base has it -> base row, not the mean
    # x is now nowhere in range (a's id 8 >= 5 rows) -> zeros
    assert torch.equal(out["base"][8], torch.zeros(4))


def test_no_base_tensor_uses_mean(three: dict[str, Path]) -> None:
    v, tensors = build(three)
    del tensors[str(three["base"])]
    tensors[str(three["a"])] = rows(5, 100.0)
    out = keyed({k: three[k] for k in ("a", "c")}, reindex_vocab_tensor(v, tensors))
    assert torch.equal(out["a"][6], torch.full((4,), 206.0))  # only c has it now


def test_missing_everywhere_zero_and_warning(three: dict[str, Path], caplog) -> None:  # type: ignore[no-untyped-def]
    v, tensors = build(three, source="base", tokens={"<new>": TokenEmbedding(None)})
    assert v.tokens[-1] == "<new>"
    out = reindex_vocab_tensor(v, tensors, name="embed")
    for t in out.values():
        assert torch.equal(t[8], torch.zeros(4))
    assert "in none of the models" in caplog.text and "<new>" in caplog.text


def test_explicit_sources_and_force(three: dict[str, Path]) -> None:
    tokens = {
        # fallback only: y's row for models lacking it comes from c (not the mean)
        "y": TokenEmbedding(TokenSource("model", ref(three["c"]))),
        # forced: every model's row of x becomes base's `</s>` row (id 2)
        "x": TokenEmbedding(
            TokenSource("model_token", ref(three["base"]), token="</s>"), force=True
        ),
        # forced by id: a's id 3 into tok_5 for everyone
        "tok_5": TokenEmbedding(
            TokenSource("model_token", ref(three["a"]), token_id=3), force=True
        ),
        # forced zero
        "tok_6": TokenEmbedding(TokenSource("zero"), force=True),
        # zero, not forced: only models lacking z get zeros (z is only in c)
        "z": TokenEmbedding(TokenSource("zero")),
    }
    v, tensors = build(three, tokens=tokens)
    out = keyed(three, reindex_vocab_tensor(v, tensors))
    assert torch.equal(out["base"][9], torch.full((4,), 208.0))
    assert torch.equal(out["a"][9], torch.full((4,), 109.0))
    for name in ("base", "a", "c"):
        assert torch.equal(out[name][8], tensors[str(three["base"])][2])  # exact copy
        assert torch.equal(out[name][5], torch.full((4,), 103.0))
        assert torch.equal(out[name][6], torch.zeros(4))
    assert torch.equal(out["a"][10], torch.zeros(4))
    assert torch.equal(out["c"][10], torch.full((4,), 209.0))


def test_force_without_source_uses_default(three: dict[str, Path]) -> None:
    v, tensors = build(three, tokens={"tok_4": TokenEmbedding(None, force=True)})
    out = keyed(three, reindex_vocab_tensor(v, tensors))
    for name in ("a", "c"):
        assert torch.equal(out[name][4], torch.full((4,), 4.0))  # base row


def test_padding_rows_mean(three: dict[str, Path]) -> None:
    v, tensors = build(three, pad_to_multiple_of=8)
    assert (v.size, v.tokenizer_length) == (16, 11)
    out = keyed(three, reindex_vocab_tensor(v, tensors))
    for t in out.values():
        assert t.shape == (16, 4)
        torch.testing.assert_close(t[11:], t[:11].mean(0, keepdim=True).expand(5, 4))


def test_axis_and_bias_and_dtype(three: dict[str, Path]) -> None:
    v, tensors = build(three, pad_to_multiple_of=4)
    lm_t = {k: t.T.contiguous().to(torch.bfloat16) for k, t in tensors.items()}  # (hidden, vocab)
    out = reindex_vocab_tensor(v, lm_t, axis=1)
    ref0 = reindex_vocab_tensor(v, tensors, axis=0)
    for k, t in out.items():
        assert t.dtype == torch.bfloat16 and t.shape == (4, 12)
        torch.testing.assert_close(t.float(), ref0[k].T.to(torch.bfloat16).float())
    bias = {k: t[:, 0].clone() for k, t in tensors.items()}
    out_b = reindex_vocab_tensor(v, bias, axis=-1)
    for k, t in out_b.items():
        assert torch.equal(t, ref0[k][:, 0])


def test_identity_returns_input(three: dict[str, Path]) -> None:
    v, tensors = build(three, source="base")
    tensors = {k: t[:8].clone() for k, t in tensors.items()}
    out = reindex_vocab_tensor(v, tensors)
    for k in tensors:
        assert out[k] is tensors[k]


def test_mergekit_fixture_sizes_and_chatml_rows(vocab_models, tok_models) -> None:  # type: ignore[no-untyped-def]
    base = str(tok_models["base"])
    v = build_vocabulary(TokenizerConfig(source="union", pad_to_multiple_of=16), vocab_models, base)
    torch.manual_seed(0)
    embeds = {m.key: torch.randn(m.vocab_size, 8, dtype=torch.float16) for m in vocab_models}
    out = reindex_vocab_tensor(v, embeds)
    chatml = embeds[str(tok_models["chatml"])]
    for t in out.values():
        assert t.shape == (80, 8)
        assert torch.equal(t[64:66], chatml[64:66])  # <|im_start|>, <|im_end|> from chatml


def test_errors(three: dict[str, Path]) -> None:
    v, tensors = build(
        three, tokens={"x": TokenEmbedding(TokenSource("model", ref(three["a"])), force=True)}
    )
    del tensors[str(three["a"])]
    with pytest.raises(RecipeError, match="has no tensor"):
        reindex_vocab_tensor(v, tensors, name="lm_head.weight")
    v, tensors = build(three)
    tensors[str(three["a"])] = rows(10, 0.0, hidden=5)
    with pytest.raises(PlanError, match="only the vocabulary axis"):
        reindex_vocab_tensor(v, tensors)
    assert reindex_vocab_tensor(v, {}) == {}


def test_truncate() -> None:
    out = truncate_vocab_tensors({"a": torch.ones(3, 66), "b": torch.ones(3, 64)}, axis=1)
    assert out["a"].shape == out["b"].shape == (3, 64)


def test_large_vocab_is_fast(tmp_path: Path) -> None:
    """150k tokens, 3 models: the re-index is vectorised (no per-token Python loop)."""
    import time

    n = 150_000
    base = make_tokenizer_folder(tmp_path / "b", vocab_size=n)
    other = make_tokenizer_folder(tmp_path / "o", vocab_size=n, extra_vocab=("extra_a", "extra_b"))
    models = [VocabModel("b", base, n), VocabModel("o", other, n), VocabModel("o2", other, n)]
    v = build_vocabulary(TokenizerConfig(source="union"), models, "b")
    assert v.tokenizer_length == n + 2
    tensors = {k: torch.randn(n, 16) for k in ("b", "o", "o2")}
    start = time.perf_counter()
    out = reindex_vocab_tensor(v, tensors)
    assert time.perf_counter() - start < 5.0
    assert torch.equal(out["b"][n], (tensors["o"][n - 2] + tensors["o2"][n - 2]) / 2)
