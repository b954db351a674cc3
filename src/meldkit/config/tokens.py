"""Parsing the ``tokenizer:`` block and the legacy ``tokenizer_source`` key."""

from __future__ import annotations

from typing import Any, Literal

from meldkit.config.keys import TOKEN_KEYS, TOKENIZER_KEYS, ParseLog, check_keys, expect_dict
from meldkit.config.modelref import ModelRef, parse_model_ref
from meldkit.config.schema import TokenEmbedding, TokenizerConfig, TokenSource
from meldkit.errors import RecipeError, did_you_mean

__all__ = ["parse_tokenizer", "parse_tokenizer_source"]

_KINDS = ("model_token", "zero")


def _parse_model_token(value: dict[str, Any], where: str) -> TokenSource:
    has_tok, has_id = value.get("token") is not None, value.get("token_id") is not None
    if has_tok == has_id:
        raise RecipeError(f"{where}: model_token needs exactly one of 'token' or 'token_id'")
    if "model" not in value:
        raise RecipeError(f"{where}: model_token needs 'model'")
    tid = value.get("token_id")
    if has_id and (not isinstance(tid, int) or isinstance(tid, bool) or tid < 0):
        raise RecipeError(f"{where}.token_id: expected a non-negative integer, got {tid!r}")
    return TokenSource(
        "model_token",
        parse_model_ref(value["model"], f"{where}.model"),
        str(value["token"]) if has_tok else None,
        tid if has_id else None,
    )


def _parse_token_source(value: Any, where: str) -> TokenSource:
    if isinstance(value, dict) and "kind" in value:
        kind = value["kind"]
        if kind == "zero":
            return TokenSource("zero")
        if kind == "model_token":
            return _parse_model_token(value, where)
        raise RecipeError(
            f"{where}.kind: unknown kind {kind!r}.{did_you_mean(str(kind), _KINDS)}",
            hint="kinds are model_token and zero; or give a model reference",
        )
    return TokenSource("model", parse_model_ref(value, where))


def _parse_token(spec: Any, where: str, log: ParseLog) -> TokenEmbedding:
    sd = expect_dict(spec, where)
    check_keys(sd, TOKEN_KEYS, where, log)
    src = (
        _parse_token_source(sd["source"], f"{where}.source")
        if sd.get("source") is not None
        else None
    )
    force = sd.get("force", False)
    if not isinstance(force, bool):
        raise RecipeError(f"{where}.force: expected true or false, got {force!r}")
    if force and src is None:
        raise RecipeError(f"{where}: force needs a source")
    return TokenEmbedding(src, force)


def parse_tokenizer(value: Any, where: str, log: ParseLog) -> TokenizerConfig:
    """The ``tokenizer:`` block: ``source``, ``tokens`` and ``pad_to_multiple_of``."""
    d = expect_dict(value, where)
    check_keys(d, TOKENIZER_KEYS, where, log)
    source = parse_tokenizer_source(d.get("source", "union"), f"{where}.source")
    tokens = {
        str(tok): _parse_token(spec, f"{where}.tokens.{tok}", log)
        for tok, spec in expect_dict(d.get("tokens") or {}, f"{where}.tokens").items()
    }
    pad = d.get("pad_to_multiple_of")
    if pad is not None and (not isinstance(pad, int) or isinstance(pad, bool) or pad < 1):
        raise RecipeError(f"{where}.pad_to_multiple_of: expected a positive integer, got {pad!r}")
    return TokenizerConfig(source, tokens, pad)


def parse_tokenizer_source(value: Any, where: str) -> Literal["union", "base"] | ModelRef:
    """``union``, ``base`` or a model reference (MergeKit's old ``model:`` prefix allowed)."""
    if isinstance(value, str):
        if value == "union":
            return "union"
        if value == "base":
            return "base"
        if value.startswith("model:"):  # MergeKit's old spelling
            value = value[len("model:") :]
    return parse_model_ref(value, where)
