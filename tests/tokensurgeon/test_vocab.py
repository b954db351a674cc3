"""Vocabulary normalisation across tokenizer styles, and row assignment."""

from __future__ import annotations

from pathlib import Path

import pytest

from meldkit.tokensurgeon.assign import assign_rows
from meldkit.tokensurgeon.options import SurgeonOptions
from meldkit.tokensurgeon.vocab import Vocabulary, byte_alphabet, read_vocabulary
from tests.tokensurgeon.conftest import CORPUS


def test_byte_level_and_wordpiece_spellings_normalise_to_the_same_keys(bpe_model, wordpiece_model):
    bpe = read_vocabulary(bpe_model, "MODEL")
    wp = read_vocabulary(wordpiece_model, "DONOR")
    assert (bpe.style, wp.style) == ("byte_level", "wordpiece")
    bpe_ids = {t: i for i, t in enumerate(bpe.tokens)}
    wp_ids = {t: i for i, t in enumerate(wp.tokens)}
    assert bpe.keys[bpe_ids["Ġmodel"]] == b" model" == wp.keys[wp_ids["model"]]
    assert bpe.keys[bpe_ids["the"]] == b"the"  # mid-word in byte-level BPE
    continuation = next(t for t in wp_ids if t.startswith("##"))
    assert wp.keys[wp_ids[continuation]] == continuation[2:].encode()
    # special tokens match by role, whatever their spelling
    assert bpe.keys[1] == wp.keys[2] == ("special", "bos")
    assert bpe.special_ids == {"bos": 1, "eos": 2, "unk": 0}
    assert wp.special_ids == {"bos": 2, "eos": 3, "unk": 1, "pad": 0}
    assert wp.text_of(wp_ids["the"]) == " the" and wp.text_of(2) is None


def test_byte_alphabet_is_gpt2s():
    alphabet = byte_alphabet()
    assert len(alphabet) == 256 and sorted(alphabet.values()) == list(range(256))
    assert (alphabet["Ġ"], alphabet["Ċ"], alphabet["A"], alphabet["ĉ"]) == (32, 10, 65, 9)


def test_metaspace_unigram_normalises_the_word_marker(tmp_path: Path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=120, special_tokens=["<unk>"], unk_token="<unk>", show_progress=False
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.save(str(tmp_path / "tokenizer.json"))
    v = read_vocabulary(tmp_path, "MODEL")
    assert v.style == "metaspace"
    pieces = [t for t in v.tokens if t and t.startswith("▁") and len(t) > 1]
    assert pieces and all(v.keys[v.tokens.index(p)] == (" " + p[1:]).encode() for p in pieces)
    # an unk token with no tokenizer config is an ordinary special token
    assert v.keys[0] == ("special", "<unk>")


def _vocab(tokens: list[str], keys: list[object]) -> Vocabulary:
    return Vocabulary(Path("."), list(tokens), list(keys), "plain", {}, None)  # type: ignore[arg-type]


def test_byte_and_prefix_matching_apply_to_the_matrix_they_name():
    model = _vocab(["A", " hel"], [b"A", b" hel"])
    donor = _vocab(["<0x41>", " hello", "zz"], [("byte", 0x41), b" hello", b"zz"])
    opts = SurgeonOptions(byte_match="embed", prefix_match="lm_head")
    embed = assign_rows(model, 2, donor, 4, opts, "embed")
    head = assign_rows(model, 2, donor, 4, opts, "lm_head")
    assert embed.kinds == ["byte", "approximated", "approximated", "unused"]
    assert embed.sources == [0, -1, -1, -1]
    assert head.kinds == ["approximated", "prefix", "approximated", "unused"]
    assert head.sources == [-1, 1, -1, -1]
    both = assign_rows(
        model, 2, donor, 3, SurgeonOptions(byte_match="yes", prefix_match="yes"), "embed"
    )
    assert both.counts == {
        "exact": 0,
        "byte": 1,
        "prefix": 1,
        "approximated": 1,
        "junk": 0,
        "unused": 0,
    }


def test_magikarp_bad_tokens_are_not_copied_and_junk_is_zeroed():
    model = _vocab(["a", "b", "c"], [b"a", b"b", b"c"])
    donor = _vocab(["a", "b", "x"], [b"a", b"b", b"x"])
    a = assign_rows(model, 3, donor, 3, SurgeonOptions(), "embed", bad_model={1}, bad_donor={1, 2})
    # 'b' is under-trained in MODEL and the donor: junk; 'x' is bad in the donor and MODEL lacks it
    assert a.kinds == ["exact", "junk", "junk"]


def test_magikarp_flags_unused_low_norm_and_untrained_rows():
    torch = pytest.importorskip("torch")
    from meldkit.tokensurgeon.assign import magikarp_bad_ids

    n, hidden = 200, 8
    tokens = [f"t{i}" for i in range(n - 2)] + ["<|reserved_special_token_0|>", "<unused_token_1>"]
    vocab = _vocab(tokens, [t.encode() for t in tokens])
    gen = torch.Generator().manual_seed(0)
    embed = torch.randn(n, hidden, generator=gen)
    untrained = torch.ones(hidden)
    embed[n - 2 :] = untrained + 0.01 * torch.randn(2, hidden, generator=gen)
    embed[5] = untrained  # never trained: points where the unused rows point
    embed[7] *= 1e-3  # a vanishing row (only checked with an untied head)
    tied = magikarp_bad_ids(vocab, embed, None)
    assert {n - 2, n - 1, 5} <= tied and 7 not in tied
    untied = magikarp_bad_ids(vocab, embed, torch.randn(n, hidden, generator=gen))
    assert {n - 2, n - 1, 5, 7} <= untied
    assert len(untied) < 12  # the 1% / 99% quantiles flag only a few others
