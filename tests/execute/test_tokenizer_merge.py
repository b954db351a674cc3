"""Tokenizer settings through whole merges: the sizes and rows MergeKit's own tests expect
(spec section 11, test_tokenizer), checked on the written weights, config and tokenizer."""

from __future__ import annotations

import json

import pytest
import torch

from meldkit.api import run_merge
from meldkit.errors import PlanError
from meldkit.testing import make_tiny_model, read_model, write_tiny_tokenizer

EMB = "model.embed_tokens.weight"
HEAD = "lm_head.weight"
CHATML = ["<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    base = make_tiny_model(root / "base", "llama", vocab=64, seed=1)
    chatml = make_tiny_model(root / "chatml", "llama", vocab=64, seed=2, added_tokens=CHATML)
    padded = make_tiny_model(root / "padded", "llama", vocab=64, seed=3)
    # four added tokens whose ids (64..67) lie beyond the model's 64 embedding rows
    write_tiny_tokenizer(padded, vocab=64, added_tokens=[f"<UNUSED_{i}>" for i in range(4)])
    return base, chatml, padded


def _recipe(base, chatml, padded, extra=""):
    return (
        f"merge_method: linear\nbase_model: {base}\nmodels:\n"
        f"  - {{model: {base}, parameters: {{weight: 1.0}}}}\n"
        f"  - {{model: {chatml}, parameters: {{weight: 1.0}}}}\n"
        f"  - {{model: {padded}, parameters: {{weight: 1.0}}}}\n{extra}"
    )


def _tokens(folder):
    data = json.loads((folder / "tokenizer.json").read_text())
    vocab = dict(data["model"]["vocab"])
    vocab.update({t["content"]: t["id"] for t in data.get("added_tokens", [])})
    return vocab


def test_without_tokenizer_setting_sizes_must_agree(trio, tmp_path):
    with pytest.raises(PlanError, match="different vocabulary sizes"):
        run_merge(_recipe(*trio), tmp_path / "o", quiet=True)


@pytest.mark.parametrize(("source", "rows"), [("base", 64), ("union", 66)])
def test_base_and_union_sizes(trio, tmp_path, source, rows):
    base, chatml, padded = trio
    out = tmp_path / source
    run_merge(_recipe(*trio, f"tokenizer_source: {source}\n"), out, quiet=True)
    merged = read_model(out)
    assert merged[EMB].shape[0] == rows == merged[HEAD].shape[0]
    assert json.loads((out / "config.json").read_text())["vocab_size"] == rows
    tokens = _tokens(out)
    assert len(tokens) == rows
    assert not any(t.startswith("<UNUSED_") for t in tokens)
    if source == "union":
        c = read_model(chatml)
        for tok in CHATML:
            # only the chatml model has these tokens: every model gets its row, so the
            # (normalised) linear merge returns that row exactly
            assert torch.allclose(
                merged[EMB][tokens[tok]], c[EMB][64 + CHATML.index(tok)], atol=1e-6
            )
        # a shared token is the plain average of the three models' rows
        b, p = read_model(base), read_model(padded)
        assert torch.allclose(merged[EMB][5], (b[EMB][5] + c[EMB][5] + p[EMB][5]) / 3, atol=1e-6)


def test_model_source_and_padding(trio, tmp_path):
    base, chatml, padded = trio
    out = tmp_path / "pad"
    run_merge(
        _recipe(*trio, f"tokenizer:\n  source: {chatml}\n  pad_to_multiple_of: 16\n"),
        out,
        quiet=True,
    )
    merged = read_model(out)
    assert merged[EMB].shape[0] == 80
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 80
    assert len(_tokens(out)) == 66
    # padding rows are each model's mean real row; averaged by linear -> mean of the 66 rows
    assert torch.allclose(merged[EMB][70], merged[EMB][:66].mean(0), atol=1e-5)


def test_forced_token_copies_its_source_row(trio, tmp_path):
    base, chatml, padded = trio
    out = tmp_path / "force"
    run_merge(
        _recipe(
            *trio,
            f"tokenizer:\n  source: union\n  tokens:\n    <|im_start|>:\n      source: {{kind: model_token, model: {base}, token: '</s>'}}\n      force: true\n",
        ),
        out,
        quiet=True,
    )
    merged, b = read_model(out), read_model(base)
    assert torch.allclose(merged[EMB][_tokens(out)["<|im_start|>"]], b[EMB][2], atol=1e-6)


def test_chat_template_builtin_is_written(trio, tmp_path):
    base, chatml, padded = trio
    out = tmp_path / "tpl"
    run_merge(_recipe(*trio, "tokenizer_source: base\nchat_template: chatml\n"), out, quiet=True)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    assert "<|im_start|>" in tok.chat_template


def test_invalid_chat_template_fails_before_computing(trio, tmp_path):
    with pytest.raises(PlanError, match="chat template"):
        run_merge(
            _recipe(*trio, "tokenizer_source: base\nchat_template: chatmll\n"),
            tmp_path / "x",
            quiet=True,
        )
    assert not (tmp_path / "x").exists()
