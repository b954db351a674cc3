"""Recipe loading: YAML text, a file, or a dict -> :class:`MergeConfig`.

Published recipes are messy and must still run as MergeKit ran them: unknown keys are warned
about (with the closest valid key) and ignored, ``parameters:`` left empty means none, and the
old ``model:`` prefix of ``tokenizer_source`` is accepted. Whatever makes a recipe impossible
to run is a :class:`RecipeError` naming the place (``slices[1].sources[0].layer_range``).
With ``strict=True`` every warning becomes an error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml

from meldkit.config.modelref import ModelRef, parse_model_ref
from meldkit.config.schema import (
    FilterEntry,
    InputModel,
    InputSource,
    MergeConfig,
    ModuleConfig,
    OutputSlice,
    Parameters,
    Setting,
    TokenEmbedding,
    TokenizerConfig,
    TokenSource,
)
from meldkit.errors import RecipeError, did_you_mean

__all__ = ["load_config", "parse_config", "RecipeWarnings"]

TOP_KEYS = (
    "merge_method", "models", "slices", "modules", "base_model", "parameters", "dtype",
    "out_dtype", "tokenizer_source", "tokenizer", "chat_template", "name",
)  # fmt: skip
MODEL_KEYS = ("model", "parameters")
SOURCE_KEYS = ("model", "layer_range", "parameters")
SLICE_KEYS = ("sources", "base_model", "parameters", "residual_weight")
MODULE_KEYS = ("models", "slices", "parameters")
TOKENIZER_KEYS = ("source", "tokens", "pad_to_multiple_of")
TOKEN_KEYS = ("source", "force")
# Method parameters users put at the top level by mistake; MergeKit ignores them there.
_COMMON_PARAMS = frozenset(
    {"weight", "density", "t", "lambda", "normalize", "int8_mask", "epsilon", "gamma"}
)


class RecipeWarnings:
    """Collects warnings while parsing; ``strict`` turns each into a RecipeError."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.items: list[str] = []

    def add(self, message: str) -> None:
        if self.strict:
            raise RecipeError(message, hint="remove or fix the key, or drop --strict to only warn")
        self.items.append(message)


def _check_keys(
    d: dict[str, Any], known: tuple[str, ...], where: str, warn: RecipeWarnings
) -> None:
    for key in d:
        if key in known:
            continue
        place = f"{where}.{key}" if where else str(key)
        if where == "" and key in _COMMON_PARAMS:
            warn.add(
                f"'{place}' is a method parameter at the top level and is ignored; put it under 'parameters:'"
            )
        else:
            warn.add(f"unknown key '{place}' is ignored.{did_you_mean(str(key), known)}")


def _expect_dict(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RecipeError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
    return value


def _expect_list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise RecipeError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
    return value


def _parse_setting(value: Any, where: str) -> Setting:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        value = [value]  # a single {filter, value} dict is a one-element list
    if isinstance(value, list):
        if value and all(isinstance(v, dict) for v in value):
            entries = []
            for i, v in enumerate(value):
                if "value" not in v:
                    raise RecipeError(
                        f"{where}[{i}]: a conditional entry needs a 'value'",
                        hint="write {filter: self_attn, value: 0.5}",
                    )
                extra = set(v) - {"filter", "value"}
                if extra:
                    raise RecipeError(
                        f"{where}[{i}]: unknown keys {sorted(extra)} (only 'filter' and 'value')"
                    )
                flt = v.get("filter")
                if flt is not None and not isinstance(flt, str):
                    raise RecipeError(f"{where}[{i}].filter: expected a string, got {flt!r}")
                entries.append(FilterEntry(flt, _parse_setting(v["value"], f"{where}[{i}].value")))
            return tuple(entries)
        for i, v in enumerate(value):
            if not isinstance(v, (bool, int, float, str)):
                raise RecipeError(
                    f"{where}[{i}]: a gradient holds numbers, got {v!r}",
                    hint="a list is either a gradient [0.2, 0.8] or filters [{filter: mlp, value: 0.5}]",
                )
        return tuple(value)
    raise RecipeError(f"{where}: unsupported parameter value {value!r}")


def _parse_parameters(value: Any, where: str) -> Parameters:
    if value is None:
        return {}
    d = _expect_dict(value, where)
    return {str(k): _parse_setting(v, f"{where}.{k}") for k, v in d.items()}


def _parse_model(value: Any, where: str, warn: RecipeWarnings) -> InputModel:
    if isinstance(value, str):
        return InputModel(parse_model_ref(value, where))
    d = _expect_dict(value, where)
    _check_keys(d, MODEL_KEYS, where, warn)
    if "model" not in d:
        raise RecipeError(
            f"{where}: missing 'model'", hint="each entry needs `model: <folder or hub id>`"
        )
    return InputModel(
        parse_model_ref(d["model"], f"{where}.model"),
        _parse_parameters(d.get("parameters"), f"{where}.parameters"),
    )


def _parse_layer_range(value: Any, where: str) -> tuple[int, int]:
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise RecipeError(
            f"{where}: expected [start, end] integers, got {value!r}",
            hint="layer_range is half-open: [0, 8] selects layers 0..7",
        )
    start, end = value
    if start < 0 or end <= start:
        raise RecipeError(
            f"{where}: [{start}, {end}] selects no layers",
            hint="layer_range is half-open [start, end) with start < end: [0, 1] selects layer 0",
        )
    return (start, end)


def _parse_slice(value: Any, where: str, warn: RecipeWarnings) -> OutputSlice:
    d = _expect_dict(value, where)
    _check_keys(d, SLICE_KEYS, where, warn)
    raw_sources = _expect_list(d.get("sources"), f"{where}.sources")
    if not raw_sources:
        raise RecipeError(f"{where}.sources: a slice needs at least one source")
    sources = []
    for i, s in enumerate(raw_sources):
        sw = f"{where}.sources[{i}]"
        sd = _expect_dict(s, sw)
        _check_keys(sd, SOURCE_KEYS, sw, warn)
        if "model" not in sd:
            raise RecipeError(f"{sw}: missing 'model'")
        if "layer_range" not in sd:
            raise RecipeError(f"{sw}: missing 'layer_range'", hint="add layer_range: [start, end]")
        sources.append(
            InputSource(
                parse_model_ref(sd["model"], f"{sw}.model"),
                _parse_layer_range(sd["layer_range"], f"{sw}.layer_range"),
                _parse_parameters(sd.get("parameters"), f"{sw}.parameters"),
            )
        )
    lengths = {s.layer_range[1] - s.layer_range[0] for s in sources}
    if len(lengths) > 1:
        desc = ", ".join(f"{s.model} {list(s.layer_range)}" for s in sources)
        raise RecipeError(
            f"{where}: all sources of a slice must span the same number of layers ({desc})",
            hint="make every layer_range the same length, or split the slice",
        )
    base = (
        parse_model_ref(d["base_model"], f"{where}.base_model")
        if d.get("base_model") is not None
        else None
    )
    rw = d.get("residual_weight")
    if rw is not None:
        warn.add(f"'{where}.residual_weight' is ignored (MergeKit parses it but never uses it)")
    return OutputSlice(
        tuple(sources), base, _parse_parameters(d.get("parameters"), f"{where}.parameters"), rw
    )


def _parse_stack(
    d: dict[str, Any], where: str, warn: RecipeWarnings
) -> tuple[tuple[InputModel, ...] | None, tuple[OutputSlice, ...] | None]:
    present = [k for k in ("models", "slices") if d.get(k) is not None]
    if len(present) != 1:
        raise RecipeError(
            f"{where or 'recipe'}: give exactly one of 'models' or 'slices'"
            + (" (found both)" if len(present) == 2 else ""),
            hint="`models:` merges whole models; `slices:` picks layer ranges",
        )
    if present[0] == "models":
        items = _expect_list(d["models"], f"{where}models" if not where else f"{where}.models")
        if not items:
            raise RecipeError(f"{where + '.' if where else ''}models: the list is empty")
        prefix = f"{where}.models" if where else "models"
        return tuple(_parse_model(m, f"{prefix}[{i}]", warn) for i, m in enumerate(items)), None
    items = _expect_list(d["slices"], f"{where}.slices" if where else "slices")
    if not items:
        raise RecipeError(f"{where + '.' if where else ''}slices: the list is empty")
    prefix = f"{where}.slices" if where else "slices"
    return None, tuple(_parse_slice(s, f"{prefix}[{i}]", warn) for i, s in enumerate(items))


def _parse_token_source(value: Any, where: str) -> TokenSource:
    if isinstance(value, dict) and "kind" in value:
        kind = value["kind"]
        if kind == "zero":
            return TokenSource("zero")
        if kind == "model_token":
            has_tok, has_id = value.get("token") is not None, value.get("token_id") is not None
            if has_tok == has_id:
                raise RecipeError(
                    f"{where}: model_token needs exactly one of 'token' or 'token_id'"
                )
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
        raise RecipeError(
            f"{where}.kind: unknown kind {kind!r}.{did_you_mean(str(kind), ['model_token', 'zero'])}",
            hint="kinds are model_token and zero; or give a model reference",
        )
    return TokenSource("model", parse_model_ref(value, where))


def _parse_tokenizer(value: Any, where: str, warn: RecipeWarnings) -> TokenizerConfig:
    d = _expect_dict(value, where)
    _check_keys(d, TOKENIZER_KEYS, where, warn)
    source = _parse_tokenizer_source(d.get("source", "union"), f"{where}.source")
    tokens: dict[str, TokenEmbedding] = {}
    for tok, spec in (_expect_dict(d.get("tokens") or {}, f"{where}.tokens")).items():
        tw = f"{where}.tokens.{tok}"
        sd = _expect_dict(spec, tw)
        _check_keys(sd, TOKEN_KEYS, tw, warn)
        src = (
            _parse_token_source(sd["source"], f"{tw}.source")
            if sd.get("source") is not None
            else None
        )
        force = sd.get("force", False)
        if not isinstance(force, bool):
            raise RecipeError(f"{tw}.force: expected true or false, got {force!r}")
        if force and src is None:
            raise RecipeError(f"{tw}: force needs a source")
        tokens[str(tok)] = TokenEmbedding(src, force)
    pad = d.get("pad_to_multiple_of")
    if pad is not None and (not isinstance(pad, int) or isinstance(pad, bool) or pad < 1):
        raise RecipeError(f"{where}.pad_to_multiple_of: expected a positive integer, got {pad!r}")
    return TokenizerConfig(source, tokens, pad)


def _parse_tokenizer_source(value: Any, where: str) -> Literal["union", "base"] | ModelRef:
    if isinstance(value, str):
        if value == "union":
            return "union"
        if value == "base":
            return "base"
        if value.startswith("model:"):  # MergeKit's old spelling
            value = value[len("model:") :]
    return parse_model_ref(value, where)


def _parse_dtype(value: Any, where: str) -> str | None:
    if value is None:
        return None
    from meldkit.io.dtypes import parse_dtype_name

    try:
        parse_dtype_name(str(value))
    except RecipeError as exc:
        raise RecipeError(f"{where}: {exc.message}", hint=exc.hint) from None
    return str(value)


def parse_config(data: Any, *, strict: bool = False, source_text: str | None = None) -> MergeConfig:
    """Validate a recipe already parsed from YAML (a dict) into a :class:`MergeConfig`."""
    if data is None:
        raise RecipeError(
            "the recipe is empty", hint="a recipe needs at least merge_method and models or slices"
        )
    if not isinstance(data, dict):
        raise RecipeError(
            f"the recipe must be a mapping of keys, got {type(data).__name__}",
            hint="start with `merge_method: linear`",
        )
    warn = RecipeWarnings(strict)
    _check_keys(data, TOP_KEYS, "", warn)
    method = data.get("merge_method")
    if not isinstance(method, str) or not method:
        raise RecipeError(
            "missing 'merge_method'",
            hint="add e.g. `merge_method: linear` (`meldkit methods` lists them)",
        )
    present = [k for k in ("models", "slices", "modules") if data.get(k) is not None]
    if len(present) != 1:
        raise RecipeError(
            "give exactly one of 'models', 'slices' or 'modules'"
            + (f" (found {', '.join(present)})" if present else ""),
            hint="`models:` merges whole models; `slices:` picks layer ranges; `modules:` is for multi-module models",
        )
    models = slices = None
    modules: dict[str, ModuleConfig] | None = None
    if present[0] == "modules":
        modules = {}
        raw_modules = _expect_dict(data["modules"], "modules")
        if not raw_modules:
            raise RecipeError(
                "modules: the mapping is empty", hint="give each module its `models:` or `slices:`"
            )
        for name, mod in raw_modules.items():
            mw = f"modules.{name}"
            md = _expect_dict(mod, mw)
            _check_keys(md, MODULE_KEYS, mw, warn)
            m_models, m_slices = _parse_stack(md, mw, warn)
            modules[str(name)] = ModuleConfig(
                m_models, m_slices, _parse_parameters(md.get("parameters"), f"{mw}.parameters")
            )
    else:
        models, slices = _parse_stack(data, "", warn)
    if data.get("tokenizer") is not None and data.get("tokenizer_source") is not None:
        raise RecipeError(
            "give either 'tokenizer' or 'tokenizer_source', not both",
            hint="`tokenizer: {source: union}` replaces `tokenizer_source: union`",
        )
    tokenizer = None
    legacy = False
    if data.get("tokenizer") is not None:
        tokenizer = _parse_tokenizer(data["tokenizer"], "tokenizer", warn)
    elif data.get("tokenizer_source") is not None:
        tokenizer = TokenizerConfig(
            _parse_tokenizer_source(data["tokenizer_source"], "tokenizer_source")
        )
        legacy = True
    chat = data.get("chat_template")
    if chat is not None and not isinstance(chat, str):
        raise RecipeError(f"chat_template: expected a string, got {chat!r}")
    return MergeConfig(
        merge_method=method,
        models=models,
        slices=slices,
        modules=modules,
        base_model=parse_model_ref(data["base_model"], "base_model")
        if data.get("base_model") is not None
        else None,
        parameters=_parse_parameters(data.get("parameters"), "parameters"),
        dtype=_parse_dtype(data.get("dtype"), "dtype"),
        out_dtype=_parse_dtype(data.get("out_dtype"), "out_dtype"),
        tokenizer=tokenizer,
        tokenizer_from_legacy_key=legacy,
        chat_template=chat,
        source_text=source_text,
        warnings=tuple(warn.items),
    )


def _yaml_error(exc: yaml.YAMLError, origin: str) -> RecipeError:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return RecipeError(
        f"{origin}: invalid YAML{where}: {problem}",
        hint="check the indentation and the ':' after each key",
    )


def load_config(source: Any, *, strict: bool = False) -> MergeConfig:
    """Load a recipe from a path, YAML text, a dict or a MergeConfig."""
    if isinstance(source, MergeConfig):
        return source
    if isinstance(source, dict):
        return parse_config(
            source, strict=strict, source_text=yaml.safe_dump(source, sort_keys=False)
        )
    origin = "recipe"
    looks_like_path = (
        isinstance(source, str)
        and source.strip() != ""
        and "\n" not in source
        and (":" not in source or Path(source).is_file())
    )
    if isinstance(source, Path) or looks_like_path:
        path = Path(source)
        if not path.is_file():
            raise RecipeError(
                f"recipe file '{source}' not found", hint="give the path of a YAML recipe"
            )
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RecipeError(f"cannot read recipe '{source}': {exc}") from None
        origin = os.fspath(path)
    elif isinstance(source, str):
        text = source
    else:
        raise RecipeError(
            f"cannot load a recipe from {type(source).__name__}",
            hint="give a path, YAML text, a dict or a MergeConfig",
        )
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, origin) from None
    # PyYAML's constructors raise plain exceptions for some malformed values (`2001-13-45:`
    # is ValueError, `!!int x` too, `!!timestamp` alone AttributeError), and deep nesting
    # RecursionError: a recipe is user input, so every one of them is a recipe error.
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise RecipeError(
            f"{origin}: invalid YAML: a value cannot be read ({detail})",
            hint="check the values and any `!!` tags in the recipe",
        ) from None
    docs = [d for d in docs if d is not None]
    if not docs:
        raise RecipeError(
            f"{origin}: the recipe is empty",
            hint="a recipe needs merge_method and models or slices",
        )
    if len(docs) > 1:
        raise RecipeError(
            f"{origin}: holds {len(docs)} YAML documents; merge takes one",
            hint="split multi-stage recipes into one file per stage",
        )
    return parse_config(docs[0], strict=strict, source_text=text)
