"""Checking ``layer_range`` values, with or without the model's layer count.

The loader checks what the recipe alone can tell (a negative or empty range, sources of one
slice spanning different numbers of layers); the planner checks again knowing each model's
layer count, so its messages can give the valid range and a corrected one. Every source of
every slice is checked, and all problems are reported together.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["RANGE_HINT", "range_problem", "slice_length_problem"]

RANGE_HINT = (
    "layer_range is half-open [start, end) with 0 <= start < end: [0, 8] selects layers 0..7"
)


def _negative_fix(start: int, end: int, n: int) -> tuple[int, int] | None:
    """The range the user most likely meant, when it lies inside ``0..n``.

    A negative start is read as 0; a negative end as counting from the end, as in Python
    (MergeKit's own slicing would select nothing or fail). Both negative: both from the end.
    """
    if start < 0 and end < 0:
        fix = (n + start, n + end)
    elif start < 0:
        fix = (0, min(end, n))
    else:
        fix = (start, n + end)
    return fix if 0 <= fix[0] < fix[1] <= n else None


def _negative_problem(where: str, start: int, end: int, model: str, n: int | None) -> str:
    which = "start and end" if start < 0 and end < 0 else "start" if start < 0 else "end"
    head = f"{where}: [{start}, {end}] has a negative {which}"
    if n is None:
        return f"{head}; layer_range is half-open [start, end) with 0 <= start < end"
    layers = f"layers of {model} are 0..{n - 1}"
    fix = _negative_fix(start, end, n)
    return f"{head}; {layers}, so use [{fix[0]}, {fix[1]}]" if fix else f"{head}; {layers}"


def _empty_problem(where: str, start: int, end: int) -> str:
    head = f"{where}: [{start}, {end}] selects no layers"
    if end < start:
        return f"{head}; the start comes first: [{end}, {start}] selects layers {end}..{start - 1}"
    return f"{head}; layer_range is half-open [start, end), so [{start}, {start + 1}] selects layer {start}"


def range_problem(
    where: str, start: int, end: int, model: str = "", num_layers: int | None = None
) -> str | None:
    """What is wrong with ``layer_range: [start, end]`` of ``model``, or None.

    ``where`` names the key (``slices[0].sources[1].layer_range``); ``num_layers`` is the
    model's layer count when known (at plan time).
    """
    if num_layers == 0:  # a module without a layer stack (a vision projector, say)
        return f"{where}: [{start}, {end}] selects layers of {model}, which has none"
    if start < 0 or end < 0:
        return _negative_problem(where, start, end, model, num_layers)
    if end <= start:
        return _empty_problem(where, start, end)
    n = num_layers
    if n is not None and end > n:
        return (
            f"{where}: layer_range [{start}, {end}] is outside {model}, "
            f"which has {n} layers (0..{n - 1})"
        )
    return None


def slice_length_problem(where: str, sources: Sequence[tuple[str, int, int]]) -> str | None:
    """The problem when the sources ``(model, start, end)`` of one slice differ in length."""
    if len({end - start for _, start, end in sources}) <= 1:
        return None
    desc = ", ".join(f"{model} [{start}, {end}]" for model, start, end in sources)
    return (
        f"{where}: all sources of a slice must span the same number of layers ({desc}); "
        "make every layer_range the same length, or split the slice"
    )
