"""Parsing parameter settings: a scalar, a gradient list, or a conditional (filter) list.

:mod:`meldkit.config.params` evaluates them for one tensor.
"""

from __future__ import annotations

from typing import Any

from meldkit.config.keys import expect_dict, typo_of
from meldkit.config.schema import FilterEntry, Parameters, Setting
from meldkit.errors import RecipeError, did_you_mean

__all__ = ["parse_setting", "parse_parameters"]

_ENTRY_KEYS = ("filter", "value")


def _parse_entry(v: dict[str, Any], where: str) -> FilterEntry:
    """One ``{filter, value}`` entry of a conditional list."""
    extra = [str(k) for k in v if k not in _ENTRY_KEYS]
    if "value" not in v:
        found, _ = typo_of(v, ["value"], _ENTRY_KEYS)
        raise RecipeError(
            f"{where}: a conditional entry needs a 'value'"
            + (f" (found '{found}': did you mean 'value'?)" if found else ""),
            hint="write {filter: self_attn, value: 0.5}",
        )
    if extra:
        # Not just a warning: MergeKit would drop a misspelt 'filter' and apply the value to
        # every tensor, which is never what the recipe meant.
        raise RecipeError(
            f"{where}: unknown key{'s' if len(extra) > 1 else ''} "
            f"{', '.join(repr(k) for k in extra)} (only 'filter' and 'value')."
            f"{did_you_mean(extra[0], _ENTRY_KEYS)}",
            hint="write {filter: self_attn, value: 0.5}",
        )
    flt = v.get("filter")
    if flt is not None and not isinstance(flt, str):
        raise RecipeError(f"{where}.filter: expected a string, got {flt!r}")
    return FilterEntry(flt, parse_setting(v["value"], f"{where}.value"))


def parse_setting(value: Any, where: str) -> Setting:
    """One parameter setting in its YAML shape, checked."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        value = [value]  # a single {filter, value} dict is a one-element list
    if isinstance(value, list):
        if value and all(isinstance(v, dict) for v in value):
            return tuple(_parse_entry(v, f"{where}[{i}]") for i, v in enumerate(value))
        for i, v in enumerate(value):
            if not isinstance(v, (bool, int, float, str)):
                raise RecipeError(
                    f"{where}[{i}]: a gradient holds numbers, got {v!r}",
                    hint="a list is either a gradient [0.2, 0.8] or filters [{filter: mlp, value: 0.5}]",
                )
        return tuple(value)
    raise RecipeError(f"{where}: unsupported parameter value {value!r}")


_LINES_KEYS = ("alpha", "beta")


def _parse_lines(value: Any, where: str) -> Parameters:
    """LiNeS' nested form ``lines: {alpha: a, beta: b}`` as ``lines_alpha`` and ``lines_beta``
    (each a setting of its own: a number, a gradient or filters)."""
    hint = "write lines: {alpha: 0.5, beta: 0.5} (or lines_alpha and lines_beta)"
    if not isinstance(value, dict):
        raise RecipeError(f"{where}: expected {{alpha: ..., beta: ...}}, got {value!r}", hint=hint)
    extra = [str(k) for k in value if k not in _LINES_KEYS]
    if extra:
        raise RecipeError(
            f"{where}: unknown key{'s' if len(extra) > 1 else ''} "
            f"{', '.join(repr(k) for k in extra)} (only 'alpha' and 'beta')."
            f"{did_you_mean(extra[0], _LINES_KEYS)}",
            hint=hint,
        )
    missing = [k for k in _LINES_KEYS if value.get(k) is None]
    if missing:
        raise RecipeError(f"{where}: '{missing[0]}' is missing (LiNeS needs both)", hint=hint)
    return {f"lines_{k}": parse_setting(value[k], f"{where}.{k}") for k in _LINES_KEYS}


def parse_parameters(value: Any, where: str) -> Parameters:
    """A ``parameters:`` block; left empty (``parameters:``) it means none. ``lines:`` is
    expanded into ``lines_alpha`` and ``lines_beta``."""
    if value is None:
        return {}
    d = expect_dict(value, where)
    out: Parameters = {}
    for k, v in d.items():
        if str(k) == "lines":  # LiNeS (meldkit.methods.modifiers)
            out.update(_parse_lines(v, f"{where}.lines"))
        else:
            out[str(k)] = parse_setting(v, f"{where}.{k}")
    return out
