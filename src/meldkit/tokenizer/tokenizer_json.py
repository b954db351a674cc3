"""Edits of a fast tokenizer's ``tokenizer.json`` document, done on the JSON itself.

Loading and re-saving through transformers is avoided on purpose: transformers 5 rebuilds
several tokenizer classes from their vocabulary (it replaces, e.g., the pre-tokenizer of a Llama
tokenizer), so a round trip could silently change how text is split. Editing the JSON keeps
every component the donor had; the ``tokenizers`` library then validates the result.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from meldkit.errors import InputError

__all__ = [
    "HF_HINT",
    "require_tokenizers",
    "parse_vocab",
    "strip_ids",
    "append_tokens",
    "added_token_entry",
]

HF_HINT = "install the Hugging Face extras: pip install 'meldkit[hf]'"

# AddedToken fields as tokenizers writes them, in its order.
_ADDED_FIELDS = ("content", "single_word", "lstrip", "rstrip", "normalized", "special")


def require_tokenizers() -> Any:
    """The ``tokenizers`` module, or an :class:`InputError` with the install hint."""
    try:
        import tokenizers
    except ImportError:
        raise InputError(
            "building a tokenizer needs the 'tokenizers' package", hint=HF_HINT
        ) from None
    return tokenizers


def parse_vocab(data: dict[str, Any] | str, where: str) -> dict[str, int]:
    """``token -> id`` (model vocabulary plus added tokens) of a tokenizer.json document
    (parsed, or its text, which saves re-serialising a large vocabulary).

    Goes through ``tokenizers`` so that the document is also validated.
    """
    tokenizers = require_tokenizers()
    try:
        text = data if isinstance(data, str) else json.dumps(data)
        tok = tokenizers.Tokenizer.from_str(text)
    except Exception as exc:  # tokenizers raises plain Exception subclasses
        raise InputError(
            f"{where}: tokenizer.json is not a valid fast tokenizer ({exc})",
            hint="check the file, or re-save the tokenizer with transformers",
        ) from None
    return dict(tok.get_vocab(with_added_tokens=True))


def added_token_entry(
    token_id: int, content: str, like: dict[str, Any] | None = None
) -> dict[str, Any]:
    """An ``added_tokens`` entry. ``like`` copies another entry's flags (first definition
    wins in a union); without it the token is an ordinary added token, as ``add_tokens`` makes
    one: not special, normalized, no stripping."""
    entry: dict[str, Any] = {"id": token_id, "content": content}
    defaults = {
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": True,
        "special": False,
    }
    for name in _ADDED_FIELDS[1:]:
        entry[name] = bool(like.get(name, defaults[name])) if like else defaults[name]
    return entry


def append_tokens(data: dict[str, Any], entries: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """A copy of ``data`` with ``entries`` appended to ``added_tokens``. Shallow: ``data``'s
    other parts are shared, never modified (a deep copy of a 150k vocabulary costs seconds)."""
    out = dict(data)
    out["added_tokens"] = [*(data.get("added_tokens") or []), *(dict(e) for e in entries)]
    return out


def _merge_pair(merge: Any) -> tuple[str, str] | None:
    # tokenizers writes merges as "a b" strings (before 0.20) or as [a, b] pairs.
    if isinstance(merge, str):
        parts = merge.split(" ")
        return (parts[0], parts[1]) if len(parts) == 2 else None
    if isinstance(merge, list) and len(merge) == 2:
        return str(merge[0]), str(merge[1])
    return None


def _strip_bpe(model: dict[str, Any], limit: int) -> None:
    vocab = {t: i for t, i in model["vocab"].items() if i < limit}
    prefix = model.get("continuing_subword_prefix") or ""
    merges = []
    for merge in model.get("merges") or []:
        pair = _merge_pair(merge)
        if pair is None:
            merges.append(merge)
            continue
        a, b = pair
        # A merge produces a+b (minus b's continuation prefix, as tokenizers builds it); a merge
        # whose inputs or product were removed would make tokenizers reject the file.
        merged = a + (b[len(prefix) :] if prefix and b.startswith(prefix) else b)
        if a in vocab and b in vocab and merged in vocab:
            merges.append(merge)
    model["vocab"] = vocab
    model["merges"] = merges


def _post_processor_ids(node: Any) -> Iterable[int]:
    """Every id a post-processor (e.g. TemplateProcessing's special_tokens) refers to."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "ids" and isinstance(value, list):
                yield from (v for v in value if isinstance(v, int))
            elif key in ("sep", "cls") and isinstance(value, list) and len(value) == 2:
                if isinstance(value[1], int):
                    yield value[1]
            else:
                yield from _post_processor_ids(value)
    elif isinstance(node, list):
        for item in node:
            yield from _post_processor_ids(item)


def strip_ids(
    data: dict[str, Any], vocab: dict[str, int], limit: int, where: str
) -> tuple[dict[str, Any], bool]:
    """Remove every token whose id is ``>= limit`` (the model's embedding rows); ``vocab`` is
    the document's own (:func:`parse_vocab`).

    Returns the new document and whether anything was removed. BPE, WordPiece, WordLevel and
    Unigram models are supported (MergeKit handles only BPE). The caller validates the result.
    """
    if all(i < limit for i in vocab.values()):
        return data, False
    # Shallow copies of the parts that change; the rest is shared with ``data``, untouched.
    out = dict(data)
    model = dict(out.get("model") or {})
    out["model"] = model
    kind = model.get("type")
    if kind == "BPE":
        _strip_bpe(model, limit)
    elif kind in ("WordPiece", "WordLevel"):
        model["vocab"] = {t: i for t, i in model["vocab"].items() if i < limit}
    elif kind == "Unigram":
        model["vocab"] = list(model["vocab"])[:limit]
        unk = model.get("unk_id")
        if isinstance(unk, int) and unk >= limit:
            raise InputError(
                f"{where}: the unknown token (id {unk}) is beyond the {limit} embedding rows"
            )
    else:
        raise InputError(
            f"{where}: cannot remove tokens beyond the {limit} embedding rows from a "
            f"'{kind}' tokenizer",
            hint="use a tokenizer source whose vocabulary fits the model (tokenizer: {source: union})",
        )
    out["added_tokens"] = [e for e in out.get("added_tokens") or [] if int(e.get("id", 0)) < limit]
    bad = sorted({i for i in _post_processor_ids(out.get("post_processor")) if i >= limit})
    if bad:
        raise InputError(
            f"{where}: the post-processor uses token ids {bad}, which are beyond the model's "
            f"{limit} embedding rows",
            hint="fix the tokenizer or the model's vocab_size",
        )
    return out, True
