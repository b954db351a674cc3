"""build_vocabulary: sizes, union order, permutations and tokens: rules (spec §5, §11)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from meldkit.config.modelref import ModelPath, ModelRef
from meldkit.config.schema import TokenEmbedding, TokenizerConfig, TokenSource
from meldkit.errors import InputError, PlanError, RecipeError
from meldkit.tokenizer import VocabModel, build_vocabulary, check_vocab_sizes
from tests.tokenizer.helpers import make_tokenizer_folder


def ref(folder: Path) -> ModelRef:
    return ModelRef(ModelPath(str(folder)))


def added_count(vocab) -> int:  # type: ignore[no-untyped-def]
    return len(vocab.tokenizer_json["added_tokens"])


def test_base_source(vocab_models, tok_models) -> None:  # type: ignore[no-untyped-def]
    base = str(tok_models["base"])
    v = build_vocabulary(TokenizerConfig(source="base"), vocab_models, base)
    assert (v.size, v.tokenizer_length, added_count(v)) == (64, 64, 3)
    assert not v.changed
    assert v.tokens[:4] == ["<unk>", "<s>", "</s>", "tok_3"]
    for m in vocab_models:
        assert v.permutation(m.key) == list(range(64))


def test_union(vocab_models, tok_models) -> None:  # type: ignore[no-untyped-def]
    v = build_vocabulary(TokenizerConfig(source="union"), vocab_models, str(tok_models["base"]))
    assert (v.size, v.tokenizer_length, added_count(v)) == (66, 66, 5)
    assert v.tokens[64:] == ["<|im_start|>", "<|im_end|>"]
    assert not any(t and t.startswith("<UNUSED") for t in v.tokens)
    assert v.changed
    assert v.permutation(str(tok_models["chatml"]))[64:] == [64, 65]
    assert v.permutation(str(tok_models["base"]))[64:] == [-1, -1]
    assert v.permutation(str(tok_models["padded"]))[64:] == [-1, -1]
    # the chatml definitions (special, not normalized) are kept
    entry = v.tokenizer_json["added_tokens"][-1]
    assert entry == {"id": 65, "content": "<|im_end|>", "single_word": False, "lstrip": False,
                     "rstrip": False, "normalized": False, "special": True}  # fmt: skip


def test_model_source(vocab_models, tok_models) -> None:  # type: ignore[no-untyped-def]
    cfg = TokenizerConfig(source=ref(tok_models["chatml"]))
    v = build_vocabulary(cfg, vocab_models, str(tok_models["base"]))
    assert (v.size, v.tokenizer_length) == (66, 66)
    assert not v.changed and v.donor_folder == tok_models["chatml"]
    # source model unstripped: padded's UNUSED tokens (ids 64..67, 64 rows) stay in its tokenizer
    v2 = build_vocabulary(
        TokenizerConfig(source=ref(tok_models["padded"])), vocab_models, str(tok_models["base"])
    )
    assert v2.tokenizer_length == 68
    assert v2.permutation(str(tok_models["padded"]))[64:] == [-1] * 4
    assert v2.missing_everywhere == tuple(f"<UNUSED_{i}>" for i in range(4))


def test_pad_to_multiple_of(vocab_models, tok_models) -> None:  # type: ignore[no-untyped-def]
    v = build_vocabulary(
        TokenizerConfig(source="union", pad_to_multiple_of=16),
        vocab_models,
        str(tok_models["base"]),
    )
    assert (v.size, v.tokenizer_length) == (80, 66)
    assert len(v.permutation(str(tok_models["base"]))) == 66
    with pytest.raises(RecipeError, match="positive"):
        build_vocabulary(
            TokenizerConfig(pad_to_multiple_of=0 - 8), vocab_models, str(tok_models["base"])
        )


def test_base_is_stripped(tmp_path: Path) -> None:
    # the padded tokenizer as the *base*: its UNUSED ids are beyond its 64 rows and removed
    padded = make_tokenizer_folder(
        tmp_path / "p", added=("<U0>", "<U1>"), added_special=False, model_vocab_size=64
    )
    models = [VocabModel("p", padded, 64)]
    v = build_vocabulary(TokenizerConfig(source="base"), models, "p")
    assert v.tokenizer_length == 64 and v.changed
    assert "<U0>" not in v.tokens


def test_strip_removes_dependent_merges(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models

    folder = tmp_path / "bpe"
    folder.mkdir()
    vocab = {"<unk>": 0, "a": 1, "b": 2, "ab": 3, "c": 4, "abc": 5}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("a", "b"), ("ab", "c")], unk_token="<unk>"))
    tok.save(str(folder / "tokenizer.json"))
    v = build_vocabulary(TokenizerConfig(source="base"), [VocabModel("m", folder, 5)], "m")
    assert v.tokens == ["<unk>", "a", "b", "ab", "c"]
    assert v.tokenizer_json["model"]["merges"] == [["a", "b"]]


def test_strip_wordpiece_and_unigram(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models

    wp = tmp_path / "wp"
    wp.mkdir()
    Tokenizer(models.WordPiece({"[UNK]": 0, "x": 1, "y": 2, "z": 3}, unk_token="[UNK]")).save(
        str(wp / "tokenizer.json")
    )
    assert build_vocabulary(
        TokenizerConfig(source="base"), [VocabModel("w", wp, 2)], "w"
    ).tokens == ["[UNK]", "x"]
    ug = tmp_path / "ug"
    ug.mkdir()
    Tokenizer(models.Unigram([("<unk>", 0.0), ("x", -1.0), ("y", -2.0)], unk_id=0)).save(
        str(ug / "tokenizer.json")
    )
    assert build_vocabulary(
        TokenizerConfig(source="base"), [VocabModel("u", ug, 2)], "u"
    ).tokens == ["<unk>", "x"]


def test_union_of_ordinary_tokens_order(tmp_path: Path) -> None:
    base = make_tokenizer_folder(tmp_path / "b", vocab_size=8)
    a = make_tokenizer_folder(tmp_path / "a", vocab_size=8, extra_vocab=("zeta", "alpha"))
    c = make_tokenizer_folder(tmp_path / "c", vocab_size=8, extra_vocab=("beta", "alpha", "gamma"))
    models = [VocabModel("b", base, 8), VocabModel("a", a, 8), VocabModel("c", c, 8)]
    v = build_vocabulary(TokenizerConfig(source="union"), models, "b")
    # models in order, each model's tokens by id; duplicates keep their first position
    assert v.tokens[8:] == ["zeta", "alpha", "beta", "gamma"]
    extra = v.tokenizer_json["added_tokens"][-4:]
    assert all(e["special"] is False and e["normalized"] is True for e in extra)
    assert v.permutation("c")[8:] == [-1, 6, 5, 7]


def test_tokens_config_adds_missing(vocab_models, tok_models) -> None:  # type: ignore[no-untyped-def]
    base = str(tok_models["base"])
    tokens = {
        "<|eot|>": TokenEmbedding(
            TokenSource("model_token", ref(tok_models["base"]), token="</s>"), force=True
        ),
        "<|im_start|>": TokenEmbedding(TokenSource("model", ref(tok_models["chatml"]))),
        "tok_5": TokenEmbedding(
            TokenSource("model_token", ref(tok_models["chatml"]), token_id=64), force=True
        ),
        "tok_6": TokenEmbedding(TokenSource("zero")),
    }
    v = build_vocabulary(TokenizerConfig(source="base", tokens=tokens), vocab_models, base)
    assert v.tokens[64:] == ["<|eot|>", "<|im_start|>"]  # in config order
    assert v.changed and v.tokenizer_length == 66
    rules = {r.token: r for r in v.rules}
    assert (rules["<|eot|>"].kind, rules["<|eot|>"].model_key, rules["<|eot|>"].source_id) == (
        "row",
        base,
        2,
    )
    assert (rules["<|im_start|>"].source_id, rules["<|im_start|>"].out_id) == (64, 65)
    assert (rules["tok_5"].source_id, rules["tok_5"].force) == (64, True)
    assert rules["tok_6"].kind == "zero"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (TokenSource("model", ModelRef(ModelPath("org/unknown"))), "not one of the merged models"),
        (TokenSource("model_token", None, token="x"), "needs a model"),
        ("base_lacks", "has no token"),
        ("bad_id", "outside model"),
        ("bad_token", "has no token 'nope'"),
        ("both", "exactly one"),
    ],
)
def test_token_rule_errors(vocab_models, tok_models, source, message) -> None:  # type: ignore[no-untyped-def]
    base = ref(tok_models["base"])
    if source == "base_lacks":
        source = TokenSource("model", base)
    elif source == "bad_id":
        source = TokenSource("model_token", base, token_id=64)
    elif source == "bad_token":
        source = TokenSource("model_token", base, token="nope")
    elif source == "both":
        source = TokenSource("model_token", base, token="<s>", token_id=1)
    cfg = TokenizerConfig(source="union", tokens={"<|im_end|>": TokenEmbedding(source)})
    with pytest.raises(RecipeError, match=message):
        build_vocabulary(cfg, vocab_models, str(tok_models["base"]))


def test_token_source_matches_lora_key(tmp_path: Path) -> None:
    base = make_tokenizer_folder(tmp_path / "b")
    models = [VocabModel(f"{base}+org/lora", base, 64)]
    cfg = TokenizerConfig(
        source="base",
        tokens={"<x>": TokenEmbedding(TokenSource("model_token", ref(base), token="<s>"))},
    )
    v = build_vocabulary(cfg, models, f"{base}+org/lora")
    assert v.rules[0].model_key == f"{base}+org/lora"


def test_unreadable_tokenizer_assumed_base(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    base = make_tokenizer_folder(tmp_path / "b")
    bare = tmp_path / "bare"
    bare.mkdir()
    broken = make_tokenizer_folder(tmp_path / "broken")
    (broken / "tokenizer.json").write_text(json.dumps({"model": {"type": "Nope"}}))
    models = [
        VocabModel("b", base, 64),
        VocabModel("bare", bare, 64),
        VocabModel("broken", broken, 64),
    ]
    v = build_vocabulary(TokenizerConfig(source="union"), models, "b")
    assert v.tokenizer_length == 64
    assert v.permutation("bare") == list(range(64)) == v.permutation("broken")
    assert "assuming it uses the base model's tokenizer" in caplog.text


def test_base_errors(tmp_path: Path, vocab_models) -> None:  # type: ignore[no-untyped-def]
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(InputError, match="base model"):
        build_vocabulary(TokenizerConfig(), [VocabModel("x", bare, 64)], "x")
    with pytest.raises(RecipeError, match="not among the inputs"):
        build_vocabulary(TokenizerConfig(), vocab_models, "missing")
    with pytest.raises(RecipeError, match="not part of the tokenizer build"):
        build_vocabulary(TokenizerConfig(), vocab_models, vocab_models[0].key).permutation("zzz")


def test_check_vocab_sizes() -> None:
    check_vocab_sizes({"a": 64, "b": 64})
    check_vocab_sizes({})
    with pytest.raises(PlanError) as err:
        check_vocab_sizes({"org/a": 64, "org/b": 66})
    assert "org/a (64)" in err.value.message and "org/b (66)" in err.value.message
    assert "tokenizer_source: base" in (err.value.hint or "")
    assert "union" in (err.value.hint or "")


_DETERMINISM_SCRIPT = """
import json, sys
from pathlib import Path
from meldkit.config.schema import TokenizerConfig
from meldkit.tokenizer import VocabModel, build_vocabulary
root = Path(sys.argv[1])
models = [VocabModel(n, root / n, int(s)) for n, s in (("b", 8), ("c", 8), ("a", 8))]
print(json.dumps(build_vocabulary(TokenizerConfig(source="union"), models, "b").tokens))
"""


def test_union_order_independent_of_hash_seed(tmp_path: Path) -> None:
    make_tokenizer_folder(tmp_path / "b", vocab_size=8)
    make_tokenizer_folder(tmp_path / "c", vocab_size=8, extra_vocab=("q", "w", "e", "r", "t"))
    make_tokenizer_folder(tmp_path / "a", vocab_size=8, extra_vocab=("y", "t", "u", "q", "o"))
    outputs = []
    for seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        result = subprocess.run(
            [sys.executable, "-c", _DETERMINISM_SCRIPT, str(tmp_path)],
            env=env, capture_output=True, text=True, check=True, timeout=120,
        )  # fmt: skip
        outputs.append(json.loads(result.stdout.strip().splitlines()[-1]))
    assert outputs[0] == outputs[1]
    assert outputs[0][8:] == ["q", "w", "e", "r", "t", "y", "u", "o"]
