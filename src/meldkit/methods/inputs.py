"""Splitting a method's inputs into the base and the other models.

Merge functions receive every input in recipe order with the base at ``base_index``. Most
methods work on "the others" (and their ``per_non_base`` parameters); :func:`non_base` gives
them in order, together with their position, which random methods use as the salt of their
generator so that each model gets its own reproducible stream.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["Operand", "non_base", "param_float", "base_and_other", "output_dtype"]


@dataclass(frozen=True)
class Operand:
    """One non-base input: its position in ``inputs``, its tensor and its parameters."""

    index: int
    tensor: torch.Tensor
    params: Mapping[str, Any]


def non_base(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    per_input: Sequence[Mapping[str, Any]],
) -> list[Operand]:
    """Every input except the base, in recipe order."""
    return [
        Operand(i, x, per_input[i] if i < len(per_input) else {})
        for i, x in enumerate(inputs)
        if i != base_index
    ]


def param_float(params: Mapping[str, Any], name: str, default: float) -> float:
    """``params[name]`` as a float, or ``default`` when it is absent or None.

    The planner fills in defaults, but merge functions are also called directly (tests, the
    in-memory API), so each one states its MergeKit default once more here.
    """
    value = params.get(name)
    return default if value is None else float(value)


def base_and_other(
    inputs: Sequence[torch.Tensor], base_index: int | None, method: str
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(base, other)`` for the methods that take the base and exactly one model, or None when
    only one input has this tensor (the planner's passthrough policy: return it as it is)."""
    if len(inputs) == 1:
        return None
    assert base_index is not None and len(inputs) == 2, f"{method} needs the base and one model"
    return inputs[base_index], inputs[1 - base_index]


def output_dtype(inputs: Sequence[torch.Tensor], out_dtype: str | None) -> torch.dtype:
    """The dtype a method returns: the engine's output dtype when known (``ctx.out_dtype``, so
    the result is rounded once), else the math dtype (float64 when an input is float64,
    float32 otherwise)."""
    import torch

    from meldkit.io.dtypes import torch_dtype

    if out_dtype is not None:
        return torch_dtype(out_dtype)
    return torch.float64 if any(x.dtype == torch.float64 for x in inputs) else torch.float32
