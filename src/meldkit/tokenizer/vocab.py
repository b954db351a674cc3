"""The output vocabulary (MergeKit's BuildTokenizer) and each model's token permutation.

Rules (behaviour spec §5):

* The base tokenizer is the base model's, stripped of ids ``>= vocab_size`` (its embedding
  rows). A model whose tokenizer cannot be read is assumed to share the base's.
* ``source: base`` -> the stripped base tokenizer.
* ``source: <model>`` -> that model's tokenizer, unstripped.
* ``source: union`` -> the stripped base plus every token of the other models (ids below their
  ``vocab_size``) that it lacks, appended as added tokens. MergeKit's order depends on hash
  seeds; ours is fixed: models in the given order, each model's tokens by id.
* Keys of ``tokens:`` still missing are appended, then the embedding size is rounded up to
  ``pad_to_multiple_of``.

For every model, :meth:`OutputVocabulary.permutation` maps each output id to the model's own id
(or -1 when the model lacks the token within its embedding rows). The ``tokens:`` settings
are resolved and checked here, before any tensor is read.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from meldkit.config.modelref import ModelRef
from meldkit.config.schema import TokenEmbedding, TokenizerConfig
from meldkit.errors import InputError, PlanError, RecipeError
from meldkit.tokenizer.files import read_tokenizer_text
from meldkit.tokenizer.tokenizer_json import (
    added_token_entry,
    append_tokens,
    parse_vocab,
    strip_ids,
)

__all__ = [
    "VocabModel",
    "TokenRule",
    "OutputVocabulary",
    "build_vocabulary",
    "check_vocab_sizes",
]

log = logging.getLogger(__name__)

_ADDED_FLAGS = ("special", "normalized", "lstrip", "rstrip", "single_word")


@dataclass(frozen=True)
class VocabModel:
    """One input model: ``key`` is ``str(ModelRef)``, ``folder`` holds its tokenizer (for a
    ``model+lora`` ref: the base model's folder), ``vocab_size`` its embedding row count."""

    key: str
    folder: Path
    vocab_size: int


@dataclass(frozen=True)
class TokenRule:
    """A resolved ``tokens:`` entry: where the row of output token ``out_id`` comes from.

    ``kind`` ``"row"``: row ``source_id`` of model ``model_key``; ``"zero"``: zeros;
    ``"default"``: the usual fallback (an entry with ``force`` and no ``source``).
    """

    token: str
    out_id: int
    kind: Literal["row", "zero", "default"]
    model_key: str | None = None
    source_id: int | None = None
    force: bool = False


@dataclass
class _Document:
    """A parsed tokenizer.json: the document, its vocabulary and added-token definitions."""

    data: dict[str, Any]
    vocab: dict[str, int]
    added: dict[str, dict[str, Any]]


@dataclass
class _ModelTokens:
    key: str
    vocab_size: int
    doc: _Document
    shares_base: bool = False  # tokenizer unreadable or absent: assumed to be the base's

    @property
    def token_to_id(self) -> dict[str, int]:
        return self.doc.vocab


@dataclass
class OutputVocabulary:
    """The merged vocabulary: tokens in output id order, sizes, permutations, and the
    tokenizer.json document to save.

    ``tokens[i]`` is None only for an id the source tokenizer leaves unused (a hole).
    ``size`` is the embedding row count (= config ``vocab_size``, padded);
    ``tokenizer_length`` the real token count. ``changed`` is False when the tokenizer is the
    donor's, unmodified (its files can then be copied verbatim).
    """

    tokens: list[str | None]
    size: int
    tokenizer_length: int
    base_key: str
    tokenizer_json: dict[str, Any]
    donor_folder: Path
    changed: bool
    rules: tuple[TokenRule, ...] = ()
    missing_everywhere: tuple[str, ...] = ()
    _perms: dict[str, list[int]] = field(default_factory=dict, repr=False)
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    @property
    def keys(self) -> list[str]:
        """The model keys a permutation exists for, in the given order."""
        return list(self._perms)

    def permutation(self, key: str) -> list[int]:
        """For each output id ``< tokenizer_length``: model ``key``'s own id, or -1.

        Padding rows (``tokenizer_length <= id < size``) are not part of it.
        """
        try:
            return self._perms[key]
        except KeyError:
            raise RecipeError(
                f"model '{key}' is not part of the tokenizer build",
                hint="known models: " + ", ".join(self._perms),
            ) from None

    def token_id(self, token: str) -> int | None:
        """The output id of ``token``, or None."""
        index = self._cache.get("index")
        if index is None:
            index = {t: i for i, t in enumerate(self.tokens) if t is not None}
            self._cache["index"] = index
        return index.get(token)


def check_vocab_sizes(models: dict[str, int]) -> None:
    """Fail early when inputs have different vocabulary sizes and no tokenizer setting says
    how to reconcile them (MergeKit would stop later with a cryptic tensor-size error)."""
    if len(set(models.values())) <= 1:
        return
    listing = ", ".join(f"{key} ({size})" for key, size in models.items())
    raise PlanError(
        [f"the input models have different vocabulary sizes: {listing}"],
        hint="add `tokenizer_source: base` to keep the base model's vocabulary or "
        "`tokenizer_source: union` to merge the vocabularies (or a `tokenizer:` block)",
    )


def _key_for(ref: ModelRef, keys: Sequence[str], what: str) -> str:
    """The model key a recipe reference means: exact, else the unique key for the same base
    path (a ``tokens:`` entry may write ``org/m`` for the input ``org/m+lora``)."""
    text = str(ref)
    if text in keys:
        return text
    base = str(ref.model)
    matches = [k for k in keys if k == base or k.startswith(base + "+")]
    if len(matches) == 1:
        return matches[0]
    raise RecipeError(
        f"{what}: model '{text}' is not one of the merged models",
        hint="use one of: " + ", ".join(keys),
    )


def _added_defs(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {str(e["content"]): e for e in data.get("added_tokens") or [] if "content" in e}


def _read_document(folder: Path, where: str, cache: dict[str, _Document]) -> _Document:
    text = read_tokenizer_text(folder)
    if text is None:
        raise InputError(f"{where}: no tokenizer files")
    # Fine-tunes usually ship their base's tokenizer unchanged: parse each distinct file once.
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if digest not in cache:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: tokenizer.json is not valid JSON ({exc})") from None
        if not isinstance(data, dict) or "model" not in data:
            raise InputError(f"{where}: tokenizer.json is not a tokenizers document (no 'model')")
        cache[digest] = _Document(data, parse_vocab(text, where), _added_defs(data))
    return cache[digest]


def _read_model(
    model: VocabModel, base: _ModelTokens | None, cache: dict[str, _Document]
) -> _ModelTokens:
    where = f"{model.key} ({model.folder})"
    try:
        return _ModelTokens(model.key, model.vocab_size, _read_document(model.folder, where, cache))
    except InputError as exc:
        if base is None:
            raise InputError(
                f"cannot read the tokenizer of the base model: {exc.message}",
                hint=exc.hint or "the base model's folder must contain a tokenizer",
            ) from None
        # MergeKit's behaviour: an unreadable tokenizer is assumed to be the base's.
        log.warning("%s; assuming it uses the base model's tokenizer", exc.message)
        return _ModelTokens(model.key, model.vocab_size, base.doc, shares_base=True)


def _ordered_tokens(vocab: dict[str, int]) -> list[str | None]:
    size = max(vocab.values(), default=-1) + 1
    tokens: list[str | None] = [None] * size
    for token, i in vocab.items():
        tokens[i] = token
    return tokens


def _union_entries(
    start: int, present: set[str], others: Sequence[_ModelTokens]
) -> list[dict[str, Any]]:
    """Added-token entries for the tokens the other models have and the base lacks: models in
    the given order, each model's tokens by id."""
    entries: list[dict[str, Any]] = []
    first_def: dict[str, tuple[str, dict[str, Any]]] = {}
    seen: set[tuple[int, int]] = set()
    for m in others:
        for token, definition in m.doc.added.items():
            if token in first_def:
                owner, earlier = first_def[token]
                if any(earlier.get(k) != definition.get(k) for k in _ADDED_FLAGS):
                    log.warning(
                        "added token %r differs between %s and %s; using %s's",
                        token,
                        owner,
                        m.key,
                        owner,
                    )
            elif m.token_to_id.get(token, m.vocab_size) < m.vocab_size:
                first_def[token] = (m.key, definition)
        signature = (id(m.doc), m.vocab_size)
        if m.shares_base or signature in seen:
            continue  # an identical tokenizer with the same row count adds nothing new
        seen.add(signature)
        limit = m.vocab_size
        new = sorted((i, t) for t, i in m.token_to_id.items() if i < limit and t not in present)
        for _, token in new:
            present.add(token)
            like = first_def.get(token, (m.key, m.doc.added.get(token)))[1]
            entries.append(added_token_entry(start + len(entries), token, like))
    return entries


def _permutation(tokens: list[str | None], model: _ModelTokens) -> list[int]:
    lookup, limit = model.token_to_id.get, model.vocab_size
    perm = []
    for t in tokens:
        i = lookup(t) if t is not None else None
        perm.append(i if i is not None and i < limit else -1)
    return perm


def _resolve_rule(
    token: str,
    setting: TokenEmbedding,
    out_id: int,
    models: dict[str, _ModelTokens],
    perms: dict[str, list[int]],
) -> TokenRule:
    what = f"tokenizer.tokens[{token!r}]"
    src = setting.source
    if src is None:
        return TokenRule(token, out_id, "default", force=setting.force)
    if src.kind == "zero":
        return TokenRule(token, out_id, "zero", force=setting.force)
    if src.model is None:
        raise RecipeError(f"{what}: the source needs a model")
    key = _key_for(src.model, list(models), what)
    model = models[key]
    if src.kind == "model":
        source_id = perms[key][out_id]
        if source_id < 0:
            raise RecipeError(
                f"{what}: model '{key}' has no token {token!r} within its {model.vocab_size} embedding rows",
                hint="use {kind: model_token, model: ..., token: ...} to take another token's row",
            )
        return TokenRule(token, out_id, "row", key, source_id, setting.force)
    # model_token: a given token or id of that model
    if (src.token is None) == (src.token_id is None):
        raise RecipeError(f"{what}: model_token needs exactly one of 'token' and 'token_id'")
    if src.token is not None:
        found = model.token_to_id.get(src.token)
        if found is None:
            raise RecipeError(f"{what}: model '{key}' has no token {src.token!r}")
        source_id = found
    else:
        source_id = int(src.token_id)  # type: ignore[arg-type]
    if not 0 <= source_id < model.vocab_size:
        raise RecipeError(
            f"{what}: token id {source_id} is outside model '{key}''s {model.vocab_size} embedding rows"
        )
    return TokenRule(token, out_id, "row", key, source_id, setting.force)


def build_vocabulary(
    config: TokenizerConfig, models: Sequence[VocabModel], base_key: str
) -> OutputVocabulary:
    """Build the output vocabulary for ``config`` from ``models`` (recipe order, base first is
    customary; ``base_key`` is the base model, or the first referenced model without one)."""
    by_key = {m.key: m for m in models}
    if base_key not in by_key:
        raise RecipeError(f"tokenizer: the base model '{base_key}' is not among the inputs")
    base_model = by_key[base_key]
    cache: dict[str, _Document] = {}
    base = _read_model(base_model, None, cache)
    read: dict[str, _ModelTokens] = {base_key: base}
    for m in models:
        if m.key not in read:
            read[m.key] = _read_model(m, base, cache)

    limit = base_model.vocab_size
    document, changed = strip_ids(
        base.doc.data, base.doc.vocab, limit, f"{base_key} ({base_model.folder})"
    )
    vocab = {t: i for t, i in base.doc.vocab.items() if i < limit} if changed else base.doc.vocab
    if changed:
        log.info("removed base tokens with ids >= %d (the model's embedding rows)", limit)

    source = config.source
    donor = base_model.folder
    if source == "union":
        start = max(vocab.values(), default=-1) + 1
        others = [read[m.key] for m in models if m.key != base_key]
        entries = _union_entries(start, set(vocab), others)
        if entries:
            document, changed = append_tokens(document, entries), True
            vocab = {**vocab, **{e["content"]: e["id"] for e in entries}}
    elif source != "base":
        key = _key_for(source, list(read), "tokenizer.source")
        if read[key].shares_base:
            raise InputError(
                f"tokenizer.source: cannot read the tokenizer of '{key}'",
                hint="choose a model with a tokenizer, or `source: base`",
            )
        document, vocab, changed, donor = (
            read[key].doc.data,
            read[key].doc.vocab,
            False,
            by_key[key].folder,
        )

    extra = [t for t in config.tokens if t not in vocab]
    if extra:
        start = max(vocab.values(), default=-1) + 1
        new = [added_token_entry(start + i, t) for i, t in enumerate(extra)]
        document, changed = append_tokens(document, new), True
    if changed:
        vocab = parse_vocab(document, "output tokenizer")  # validates the edited document

    tokens = _ordered_tokens(vocab)
    length = len(tokens)
    size = length
    if config.pad_to_multiple_of is not None:
        multiple = int(config.pad_to_multiple_of)
        if multiple <= 0:
            raise RecipeError("tokenizer.pad_to_multiple_of must be a positive integer")
        size = -(-length // multiple) * multiple

    perms: dict[str, list[int]] = {}
    by_signature: dict[tuple[int, int], list[int]] = {}
    for key, mt in read.items():
        signature = (id(mt.doc), mt.vocab_size)
        if signature not in by_signature:
            by_signature[signature] = _permutation(tokens, mt)
        perms[key] = by_signature[signature]

    rules = tuple(
        _resolve_rule(token, setting, vocab[token], read, perms)
        for token, setting in config.tokens.items()
    )
    configured = {r.out_id for r in rules if r.kind != "default"}
    distinct = list({id(p): p for p in perms.values()}.values())
    nowhere = tuple(
        t
        for i, t in enumerate(tokens)
        if t is not None and i not in configured and all(p[i] < 0 for p in distinct)
    )
    if nowhere:
        shown = ", ".join(repr(t) for t in nowhere[:10]) + (" ..." if len(nowhere) > 10 else "")
        log.warning(
            "%d output tokens are in no input model; their rows will be zeros: %s",
            len(nowhere),
            shown,
        )
    return OutputVocabulary(
        tokens=tokens,
        size=size,
        tokenizer_length=length,
        base_key=base_key,
        tokenizer_json=document,
        donor_folder=Path(donor),
        changed=changed,
        rules=rules,
        missing_everywhere=nowhere,
        _perms=perms,
    )
