"""Filters of conditional parameters that can never match, and the name they probably meant.

A filter is a plain substring of tensor names (``self_attn``, ``mlp``, ``layers.3.``). One that
matches no tensor name silently leaves its value unused: the parameter falls back to the next
scope or its default, exactly what a typo like ``self_atn`` should not do unnoticed.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator

from meldkit.config.schema import FilterEntry, Setting

__all__ = ["setting_filters", "matches_any", "closest_name_part"]

_DIGITS = re.compile(r"\d+")


def setting_filters(value: Setting) -> Iterator[str]:
    """Every filter string of a setting, nested conditionals included (not ``*`` or absent)."""
    if not isinstance(value, tuple):
        return
    for entry in value:
        if isinstance(entry, FilterEntry):
            if entry.filter is not None and entry.filter != "*":
                yield entry.filter
            yield from setting_filters(entry.value)


def matches_any(flt: str, names: Iterable[str]) -> bool:
    """Whether ``flt`` is a substring of at least one of ``names`` (MergeKit's match rule)."""
    return any(flt in name for name in names)


def _windows(names: Iterable[str], width: int) -> set[str]:
    """Every run of ``width`` consecutive dotted components of the names."""
    out: set[str] = set()
    for name in names:
        parts = name.split(".")
        for i in range(len(parts) - width + 1):
            out.add(".".join(parts[i : i + width]))
    return out


def closest_name_part(flt: str, names: Iterable[str]) -> str | None:
    """The existing dotted name component (or run of as many components as ``flt`` has)
    closest to ``flt``, or None when nothing is close.

    Only candidates with the same numbers are offered: ``layers.9.`` on a 4-layer model is not
    a typo of ``layers.0.``, and suggesting another layer would change what the recipe means.
    """
    core = flt.strip(".")
    if not core:
        return None
    digits = _DIGITS.findall(core)
    candidates = {c for c in _windows(names, core.count(".") + 1) if _DIGITS.findall(c) == digits}
    close = difflib.get_close_matches(core, sorted(candidates), n=1, cutoff=0.6)
    return close[0] if close else None
