"""Tensors that are computed on demand instead of read from a file.

A :class:`ComputedTensorInfo` stands where a :class:`~meldkit.io.header.TensorInfo` of a
checkpoint would: the same name, dtype, shape and byte range (those of the checkpoint it
replaces), and a ``produce`` function that returns the tensor. :class:`~meldkit.io.reader.
TensorReader` calls it instead of reading. ``meldkit multi --no-intermediates`` uses it to feed
a later stage the earlier stage's merged tensors without writing them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from meldkit.io.header import TensorInfo

__all__ = ["ComputedTensorInfo"]


@dataclass(frozen=True)
class ComputedTensorInfo(TensorInfo):
    """A tensor made by ``produce()`` (a CPU tensor of ``dtype`` and ``shape``) when read."""

    produce: Callable[[], Any] = field(default=lambda: None, compare=False, repr=False)
