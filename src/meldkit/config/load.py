"""Recipe loading: YAML text, a file, or a dict -> :class:`MergeConfig`.

Published recipes are messy and must still run as MergeKit ran them: unknown keys are warned
about (with the closest valid key) and ignored, ``parameters:`` left empty means none, and the
old ``model:`` prefix of ``tokenizer_source`` is accepted. Whatever makes a recipe impossible
to run is a :class:`RecipeError` naming the place (``slices[1].sources[0].layer_range``);
a missing key names the unknown key that looks like its misspelling. With ``strict=True``
every warning becomes an error. The valid keys live in :mod:`meldkit.config.keys`, the
tokenizer block in :mod:`meldkit.config.tokens`, and files that are not merge recipes (MoE,
multi-stage) are recognised by :mod:`meldkit.config.recognise`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from meldkit.config.keys import TOP_KEYS, ParseLog, check_keys, missing_key, typo_of
from meldkit.config.modelref import parse_model_ref
from meldkit.config.recognise import list_recipe_error, multi_document_error, other_tool_error
from meldkit.config.schema import MergeConfig, ModuleConfig, TokenizerConfig
from meldkit.config.settings import parse_parameters
from meldkit.config.stack import parse_modules, parse_stack
from meldkit.config.tokens import parse_tokenizer, parse_tokenizer_source
from meldkit.errors import RecipeError

__all__ = ["load_config", "parse_config"]

_STACK_KEYS = ("models", "slices", "modules")


def _parse_dtype(value: Any, where: str) -> str | None:
    if value is None:
        return None
    from meldkit.io.dtypes import parse_dtype_name

    try:
        parse_dtype_name(str(value))
    except RecipeError as exc:
        raise RecipeError(f"{where}: {exc.message}", hint=exc.hint) from None
    return str(value)


def _check_shape(data: Any) -> dict[str, Any]:
    """The recipe as a mapping; another tool's file or a multi-stage list is named as such."""
    if data is None:
        raise RecipeError(
            "the recipe is empty", hint="a recipe needs at least merge_method and models or slices"
        )
    if isinstance(data, list):
        raise list_recipe_error(data)
    if not isinstance(data, dict):
        raise RecipeError(
            f"the recipe must be a mapping of keys, got {type(data).__name__}",
            hint="start with `merge_method: linear`",
        )
    other = other_tool_error(data)
    if other is not None:
        raise other
    return data


def _merge_method(data: dict[str, Any]) -> str:
    method = data.get("merge_method")
    hint = "add e.g. `merge_method: linear` (`meldkit methods` lists them)"
    if method is None or method == "":
        raise missing_key(data, "merge_method", TOP_KEYS, "", hint=hint)
    if not isinstance(method, str):
        raise RecipeError(f"merge_method: expected a method name, got {method!r}", hint=hint)
    return method


def _stack_choice(data: dict[str, Any]) -> str:
    present = [k for k in _STACK_KEYS if data.get(k) is not None]
    if len(present) == 1:
        return present[0]
    found, wanted = typo_of(data, _STACK_KEYS, TOP_KEYS) if not present else ("", "")
    raise RecipeError(
        "give exactly one of 'models', 'slices' or 'modules'"
        + (f" (found {', '.join(present)})" if present else "")
        + (f" (found '{found}': did you mean '{wanted}'?)" if found else ""),
        hint="`models:` merges whole models; `slices:` picks layer ranges; `modules:` is for multi-module models",
    )


def _tokenizer(data: dict[str, Any], log: ParseLog) -> tuple[TokenizerConfig | None, bool]:
    """The tokenizer settings, and whether they came from the legacy ``tokenizer_source``."""
    if data.get("tokenizer") is not None and data.get("tokenizer_source") is not None:
        raise RecipeError(
            "give either 'tokenizer' or 'tokenizer_source', not both",
            hint="`tokenizer: {source: union}` replaces `tokenizer_source: union`",
        )
    if data.get("tokenizer") is not None:
        return parse_tokenizer(data["tokenizer"], "tokenizer", log), False
    if data.get("tokenizer_source") is not None:
        source = parse_tokenizer_source(data["tokenizer_source"], "tokenizer_source")
        return TokenizerConfig(source), True
    return None, False


def parse_config(
    data: Any, *, strict: bool = False, source_text: str | None = None, check_ranges: bool = True
) -> MergeConfig:
    """Validate a recipe already parsed from YAML (a dict) into a :class:`MergeConfig`.

    Under ``strict`` every warning is an error (all raised together). With ``check_ranges``
    false, negative or empty layer ranges are left for the planner, which knows the layer
    counts and reports them with the valid range.
    """
    data = _check_shape(data)
    log = ParseLog(strict)
    check_keys(data, TOP_KEYS, "", log)
    method = _merge_method(data)
    models = slices = None
    modules: dict[str, ModuleConfig] | None = None
    if _stack_choice(data) == "modules":
        modules = parse_modules(data["modules"], log)
    else:
        models, slices = parse_stack(data, "", TOP_KEYS, log)
    tokenizer, legacy = _tokenizer(data, log)
    chat = data.get("chat_template")
    if chat is not None and not isinstance(chat, str):
        raise RecipeError(f"chat_template: expected a string, got {chat!r}")
    base = data.get("base_model")
    config = MergeConfig(
        merge_method=method,
        models=models,
        slices=slices,
        modules=modules,
        base_model=parse_model_ref(base, "base_model") if base is not None else None,
        parameters=parse_parameters(data.get("parameters"), "parameters"),
        dtype=_parse_dtype(data.get("dtype"), "dtype"),
        out_dtype=_parse_dtype(data.get("out_dtype"), "out_dtype"),
        tokenizer=tokenizer,
        tokenizer_from_legacy_key=legacy,
        chat_template=chat,
        source_text=source_text,
        warnings=tuple(log.warnings),
        ignored_top_keys=tuple(str(k) for k in data if k not in TOP_KEYS),
    )
    log.finish(check_ranges)
    return config


def _yaml_error(exc: yaml.YAMLError, origin: str) -> RecipeError:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return RecipeError(
        f"{origin}: invalid YAML{where}: {problem}",
        hint="check the indentation and the ':' after each key",
    )


def load_config(source: Any, *, strict: bool = False, check_ranges: bool = True) -> MergeConfig:
    """Load a recipe from a path, YAML text, a dict or a MergeConfig.

    ``strict`` and ``check_ranges`` are as in :func:`parse_config`; a MergeConfig is returned
    as it is.
    """
    if isinstance(source, MergeConfig):
        return source
    if isinstance(source, dict):
        text = yaml.safe_dump(source, sort_keys=False)
        return parse_config(source, strict=strict, source_text=text, check_ranges=check_ranges)
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
        raise multi_document_error(docs, origin)
    return parse_config(docs[0], strict=strict, source_text=text, check_ranges=check_ranges)
