"""Hand-built tokenizer folders mirroring MergeKit's test fixtures (behaviour spec §11).

* base: BPE vocabulary ``<unk>, <s>, </s>, tok_3 .. tok_63``; model vocab 64; the three specials
  are added tokens.
* chatml: the same plus ``<|im_start|>`` (64) and ``<|im_end|>`` (65); model vocab 66.
* padded: the same plus ``<UNUSED_0..3>`` (64..67); model vocab 64, so they are out of range.
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIALS = ("<unk>", "<s>", "</s>")


def make_tokenizer_folder(
    folder: Path,
    *,
    vocab_size: int = 64,
    added: tuple[str, ...] = (),
    added_special: bool = True,
    model_vocab_size: int | None = None,
    extra_vocab: tuple[str, ...] = (),
    chat_template: str | None = None,
) -> Path:
    """Write tokenizer.json, tokenizer_config.json, special_tokens_map.json and config.json."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for i in range(len(SPECIALS), vocab_size - len(extra_vocab)):
        vocab[f"tok_{i}"] = i
    for t in extra_vocab:  # other-named ordinary tokens at the end of the BPE vocabulary
        vocab[t] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    if added_special:
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in added])
    else:
        tok.add_tokens(list(added))
    tok.save(str(folder / "tokenizer.json"))
    data = json.loads((folder / "tokenizer.json").read_text())
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "model_max_length": 2048,
        "added_tokens_decoder": {
            str(e["id"]): {
                k: e[k]
                for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")
            }
            for e in data["added_tokens"]
        },
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
    )
    rows = model_vocab_size if model_vocab_size is not None else vocab_size + len(added)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": rows}))
    return folder
