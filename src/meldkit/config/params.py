"""Parameter resolution: the value of one parameter for one tensor.

MergeKit rules (spec section 2.3):

* gradient ``[v0, ..., vn-1]`` at depth ``t``: ``scaled = t*(n-1)``, interpolate between
  ``v[floor(scaled)]`` and ``v[min(n-1, floor(scaled)+1)]``; lists of bools/strings pick
  ``v[floor(t*(n-1))]``; an empty list is unset;
* a filter list is tried in order, an entry matches when its filter is absent, ``"*"`` or a plain
  substring of the tensor name; the first match wins; no match is unset;
* scopes are tried from the most specific; the first one giving a value wins.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from meldkit.config.schema import FilterEntry, Parameters, Scalar, Setting

__all__ = ["evaluate_setting", "resolve_parameter", "layer_depth"]


def layer_depth(index_in_slice: int, slice_length: int) -> float:
    """``t`` of a layer: ``idx/(L-1)``, and 1.0 for a one-layer slice (as MergeKit)."""
    if slice_length <= 1:
        return 1.0
    return index_in_slice / (slice_length - 1)


def _gradient(values: tuple[Scalar, ...], t: float) -> Scalar | None:
    n = len(values)
    if n == 0:
        return None
    if n == 1:
        return values[0]
    if any(isinstance(v, (bool, str)) for v in values):
        return values[min(n - 1, math.floor(t * (n - 1)))]
    scaled = t * (n - 1)
    i0 = min(n - 1, math.floor(scaled))
    i1 = min(n - 1, i0 + 1)
    frac = scaled - i0
    return (1 - frac) * float(values[i0]) + frac * float(values[i1])


def evaluate_setting(value: Setting, tensor_name: str, t: float) -> Scalar | None:
    """Evaluate one setting for ``tensor_name`` at depth ``t``; None means unset."""
    if value is None:
        return None
    if not isinstance(value, tuple):
        return value
    if value and all(isinstance(v, FilterEntry) for v in value):
        for entry in value:
            assert isinstance(entry, FilterEntry)
            if entry.filter is None or entry.filter == "*" or entry.filter in tensor_name:
                return evaluate_setting(entry.value, tensor_name, t)
        return None
    return _gradient(value, t)  # type: ignore[arg-type]


def resolve_parameter(
    name: str, scopes: Sequence[Parameters | None], tensor_name: str, t: float
) -> Scalar | None:
    """First non-None value of ``name`` over ``scopes`` (most specific first)."""
    for scope in scopes:
        if scope and name in scope:
            value = evaluate_setting(scope[name], tensor_name, t)
            if value is not None:
                return value
    return None
