"""The deterministic numbers in tiny checkpoints.

Every tensor's values come from a generator seeded by ``(seed, tensor name)`` only, so a
tensor holds the same numbers whatever else the model contains (more layers, another layout)
and across processes and machines.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch

from meldkit.testing.specs import TensorSpec

#: std of the random weights; 0.02 is the usual ``initializer_range``, which keeps tiny models'
#: activations and logits small and finite.
INIT_STD = 0.02


def tensor_seed(seed: int, key: str) -> int:
    """The generator seed for ``key`` (a tensor name) under the model seed ``seed``."""
    # crc32 is stable across processes (unlike hash()), so values depend only on (seed, name).
    return (seed * 1_000_003 + zlib.crc32(key.encode("utf-8"))) % (2**63 - 1)


def noise(seed: int, key: str, shape: Sequence[int]) -> torch.Tensor:
    """Standard-normal float32 values of ``shape``, determined by ``(seed, key)``."""
    gen = torch.Generator().manual_seed(tensor_seed(seed, key))
    return torch.randn(tuple(shape), generator=gen, dtype=torch.float32)


def init_tensor(t: TensorSpec, seed: int, norm_center: float) -> torch.Tensor:
    """Deterministic float32 values for ``t``."""
    if t.parts:
        # Each stacked entry is the dim-0 concatenation of its parts, which share one shape.
        part_shape = (t.shape[1] // len(t.parts[0]), *t.shape[2:])
        return (
            torch.stack(
                [torch.cat([noise(seed, n, part_shape) for n in group]) for group in t.parts]
            )
            * INIT_STD
        )
    value = noise(seed, t.seed_key or t.name, t.shape) * INIT_STD
    if t.kind == "norm":
        value += norm_center
    return value
