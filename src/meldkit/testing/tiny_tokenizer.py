"""A hand-written tiny tokenizer, and reading back the layout of one.

:func:`write_tiny_tokenizer` writes the ``tokenizer.json``/``tokenizer_config.json``/
``special_tokens_map.json`` triple that ``transformers.AutoTokenizer`` loads, without needing the
``tokenizers`` library; :func:`base_tokenizer_layout` is what a fine-tune needs to extend one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from meldkit.testing.checkpoint_files import dump_json

#: The special tokens at ids 0, 1, 2; configs point their token ids at them so bos/eos are
#: always in range.
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
#: The files a tokenizer consists of (copied as a whole by an unchanged fine-tune).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _added_token(idx: int, content: str) -> dict[str, Any]:
    return {
        "id": idx,
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": True,
    }


def write_tiny_tokenizer(
    path: str | Path,
    vocab: int = 64,
    *,
    added_tokens: Sequence[str] | None = None,
    chat_template: str | None = None,
    model_max_length: int = 2048,
) -> Path:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``.

    The model is BPE over ``<unk>``, ``<s>``, ``</s>``, ``tok_3`` ... ``tok_{vocab-1}`` with no
    merges and a whitespace pre-tokenizer; ``ignore_merges`` makes whole in-vocab words
    (``"tok_5"``) encode to their id, so ``"tok_5 tok_7"`` -> ``[5, 7]``. ``added_tokens`` get ids
    ``vocab, vocab+1, ...`` (special, never split), so ``len(tokenizer) == vocab +
    len(added_tokens)``. Loads with ``transformers.AutoTokenizer`` without needing
    ``tokenizers`` here.

    Caveat: for a folder whose ``config.json`` says ``model_type: qwen2``, transformers v5's
    AutoTokenizer ignores ``tokenizer_class`` and builds ``Qwen2Tokenizer``, which keeps this
    vocab and the special/added tokens but swaps in its byte-level pipeline: ``"tok_5"`` then no
    longer encodes to 5 (use ``convert_tokens_to_ids``, or special/added tokens, in tests).
    """
    if vocab < len(SPECIAL_TOKENS):
        raise ValueError(f"a tokenizer needs vocab >= {len(SPECIAL_TOKENS)}")
    extra = list(added_tokens or ())
    if len(set(extra)) != len(extra):
        raise ValueError("added_tokens contains duplicates")
    base = list(SPECIAL_TOKENS) + [f"tok_{i}" for i in range(len(SPECIAL_TOKENS), vocab)]
    if clash := set(extra) & set(base):
        raise ValueError(f"added_tokens already in the base vocab: {sorted(clash)}")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    added = [_added_token(i, t) for i, t in enumerate(SPECIAL_TOKENS)]
    added += [_added_token(vocab + j, t) for j, t in enumerate(extra)]
    tokenizer: dict[str, Any] = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": "<unk>",
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": False,
            "ignore_merges": True,
            "vocab": {tok: i for i, tok in enumerate(base)},
            "merges": [],
        },
    }
    (out / "tokenizer.json").write_text(json.dumps(tokenizer, indent=2) + "\n", encoding="utf-8")
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    config: dict[str, Any] = {
        "added_tokens_decoder": {
            str(a["id"]): {k: v for k, v in a.items() if k != "id"} for a in added
        },
        **specials,
        "clean_up_tokenization_spaces": False,
        # Explicitly none: otherwise transformers v5's Qwen2Tokenizer (which AutoTokenizer forces
        # for model_type qwen2) appends its default "<|endoftext|>" pad token past the vocab.
        "pad_token": None,
        "model_max_length": model_max_length,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    dump_json(out / "tokenizer_config.json", config)
    dump_json(out / "special_tokens_map.json", specials)
    return out


def base_tokenizer_layout(base: Path, config_vocab: int) -> tuple[int, list[str], str | None]:
    """(base vocab size, added tokens in id order, chat template) of ``base``'s tokenizer."""
    tok_file = base / "tokenizer.json"
    if not tok_file.is_file():
        return config_vocab, [], None
    tok = json.loads(tok_file.read_text(encoding="utf-8"))
    n_base = len(tok["model"]["vocab"])
    added = sorted(
        (a for a in tok.get("added_tokens", []) if a["id"] >= n_base), key=lambda a: a["id"]
    )
    template = None
    cfg_file = base / "tokenizer_config.json"
    if cfg_file.is_file():
        template = json.loads(cfg_file.read_text(encoding="utf-8")).get("chat_template")
    return n_base, [a["content"] for a in added], template
