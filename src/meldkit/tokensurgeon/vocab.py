"""Both tokenizers' vocabularies, normalised so that tokens of different styles compare equal.

A token's *key* is what it means, independent of how its tokenizer spells it (behaviour spec
§5, "normalization"):

* text tokens: the UTF-8 bytes they stand for, with a word-start marker (``Ġ`` of byte-level
  BPE, ``▁`` of SentencePiece, or the absence of WordPiece's ``##``) as a leading space byte;
  byte-level BPE tokens are decoded from GPT-2's byte alphabet, so partial UTF-8 pieces match;
* byte-fallback tokens ``<0xNN>``: ``("byte", NN)`` (matched to a one-byte text token only by
  the optional byte matching);
* special tokens: ``("special", role)`` for the roles a tokenizer config names (bos, eos, unk,
  pad, ...), so ``<s>`` and ``<|endoftext|>`` match when both are the bos token; other special
  tokens ``("special", content)``.

Tokenizers are read from their files only: ``tokenizer.json`` through ``tokenizers``, a
slow-only folder converted by transformers with ``trust_remote_code=False``. No code from a
model folder ever runs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from meldkit.errors import InputError
from meldkit.tokenizer.files import read_tokenizer_text
from meldkit.tokenizer.tokenizer_json import require_tokenizers

__all__ = ["TokenKey", "Vocabulary", "read_vocabulary", "byte_alphabet"]

TokenKey = bytes | tuple[str, Any]

_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_ROLES = ("bos", "eos", "unk", "pad", "mask", "sep", "cls")
_UNUSED_MARKERS = ("unused_token", "reserved_special_token")


@lru_cache(maxsize=1)
def byte_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet: printable character -> the byte it stands for."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


@dataclass
class Vocabulary:
    """One tokenizer: ``tokens[id]`` (None for holes), each id's key, and the key -> first id
    map. ``tokenizer`` is the ``tokenizers.Tokenizer`` (for subword encoding)."""

    folder: Path
    tokens: list[str | None]
    keys: list[TokenKey | None]
    style: str  # "byte_level", "metaspace", "wordpiece" or "plain"
    special_ids: dict[str, int]  # role -> id, from the tokenizer config
    tokenizer: Any
    _index: dict[TokenKey, int] | None = field(default=None, repr=False)

    @property
    def size(self) -> int:
        """The tokenizer's length: highest id + 1."""
        return len(self.tokens)

    def index(self) -> dict[TokenKey, int]:
        """Key -> lowest id with that key (computed once)."""
        if self._index is None:
            out: dict[TokenKey, int] = {}
            for i, key in enumerate(self.keys):
                if key is not None and key not in out:
                    out[key] = i
            self._index = out
        return self._index

    def unused_ids(self) -> set[int]:
        """Ids that are holes or named as unused / reserved (the Magikarp filter's first test)."""
        return {
            i
            for i, t in enumerate(self.tokens)
            if t is None or any(m in t for m in _UNUSED_MARKERS)
        }

    def text_of(self, token_id: int) -> str | None:
        """The text a token stands for (word-start as a leading space), or None for special
        and byte-fallback tokens."""
        key = self.keys[token_id]
        if not isinstance(key, bytes):
            return None
        return key.decode("utf-8", errors="replace")


def _components(node: Any) -> list[dict[str, Any]]:
    """A pre-tokenizer/decoder node and the members of a Sequence, flattened."""
    if not isinstance(node, dict):
        return []
    inner = node.get("pretokenizers") or node.get("decoders")
    if isinstance(inner, list):
        return [c for n in inner for c in _components(n)]
    return [node]


def _style(data: dict[str, Any]) -> tuple[str, str]:
    """The tokenizer's spelling style and its WordPiece continuation prefix."""
    model = data.get("model") or {}
    parts = _components(data.get("pre_tokenizer")) + _components(data.get("decoder"))
    types = {str(p.get("type")) for p in parts}
    if "ByteLevel" in types:
        return "byte_level", ""
    if model.get("type") == "WordPiece" or "WordPiece" in types:
        return "wordpiece", str(model.get("continuing_subword_prefix") or "##")
    if "Metaspace" in types or any("▁" in t for t in list(_model_vocab(model))[:2000]):
        return "metaspace", ""
    return "plain", ""


def _model_vocab(model: dict[str, Any]) -> list[str]:
    vocab = model.get("vocab")
    if isinstance(vocab, dict):
        return list(vocab)
    if isinstance(vocab, list):  # Unigram: [[piece, score], ...]
        return [str(p[0]) for p in vocab if isinstance(p, list) and p]
    return []


@lru_cache(maxsize=1)
def _byte_table() -> dict[int, int]:
    """``str.translate`` table: byte-level alphabet character -> the character of its byte."""
    return {ord(c): b for c, b in byte_alphabet().items()}


def _text_key(token: str, style: str, prefix: str) -> bytes:
    if style == "byte_level":
        try:  # every character a byte of the alphabet: decode it (one C-level pass)
            return token.translate(_byte_table()).encode("latin-1")
        except UnicodeEncodeError:  # not a byte-level spelling (e.g. an added token)
            return token.encode("utf-8")
    if style == "wordpiece":
        if prefix and token.startswith(prefix) and len(token) > len(prefix):
            return token[len(prefix) :].encode("utf-8")
        return (" " + token).encode("utf-8")
    return token.replace("▁", " ").encode("utf-8")


def _special_roles(folder: Path) -> dict[str, str]:
    """Special token content -> role, from tokenizer_config.json / special_tokens_map.json."""
    roles: dict[str, str] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"cannot read {path}: {exc}", hint="the file is corrupt") from None
        for role in _ROLES:
            value = data.get(f"{role}_token") if isinstance(data, dict) else None
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str) and value not in roles:
                roles[value] = role
    return roles


def read_vocabulary(folder: Path, where: str) -> Vocabulary:
    """Read and normalise the tokenizer in ``folder`` (``where`` names it in errors)."""
    text = read_tokenizer_text(folder)
    if text is None:
        raise InputError(
            f"{where}: no tokenizer files in {folder}",
            hint="the folder needs a tokenizer.json (or tokenizer.model / vocab files)",
        )
    tokenizers = require_tokenizers()
    try:
        tokenizer = tokenizers.Tokenizer.from_str(text)
        data = json.loads(text)
    except Exception as exc:  # tokenizers raises plain Exception subclasses
        raise InputError(
            f"{where}: tokenizer.json is not a valid fast tokenizer ({exc})",
            hint="check the file, or re-save the tokenizer with transformers",
        ) from None
    vocab: dict[str, int] = dict(tokenizer.get_vocab(with_added_tokens=True))
    style, prefix = _style(data)
    added = {
        str(e["content"]): bool(e.get("special"))
        for e in data.get("added_tokens") or []
        if "content" in e
    }
    roles = _special_roles(Path(folder))
    size = max(vocab.values(), default=-1) + 1
    tokens: list[str | None] = [None] * size
    keys: list[TokenKey | None] = [None] * size
    special_ids: dict[str, int] = {}
    for token, i in vocab.items():
        tokens[i] = token
        if token in roles:
            keys[i] = ("special", roles[token])
            special_ids.setdefault(roles[token], i)
        elif added.get(token):
            keys[i] = ("special", token)
        elif (m := _BYTE_TOKEN.match(token)) is not None:
            keys[i] = ("byte", int(m.group(1), 16))
        elif token in added:  # a non-special added token: its text, as written
            keys[i] = token.encode("utf-8")
        else:
            keys[i] = _text_key(token, style, prefix)
    return Vocabulary(Path(folder), tokens, keys, style, special_ids, tokenizer)
