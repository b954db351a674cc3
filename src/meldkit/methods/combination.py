"""Blocked building blocks for methods whose output is a linear combination of their inputs.

slerp-like methods (slerp, nuslerp, multislerp, karcher, model_stock) only need, from the
whole tensors, the inner products of a few vectors made from the inputs (their Gram matrix);
every later step works on a K x K matrix, and the result is ``Σ c_i x_i`` for scalar
coefficients ``c``. So a merge is two passes over the inputs as stored (bf16 stays bf16):

1. :func:`gram`: ``G = V Vᵀ`` with ``V = A X`` (``X``: the inputs as rows, ``A``: K x N, e.g.
   task vectors ``x_i - b`` from :func:`differences`), in float64;
2. :func:`combine`: ``Σ c_i x_i`` in the math dtype (float32, or float64 for float64 inputs),
   rounded once to the output dtype.

Both accept per-row groups (``rows``): the tensor is viewed as ``(rows, -1)`` and each row
gets its own Gram matrix and coefficients (model_stock's ``filter_wise``, nuslerp's per-row
vectors). Memory is the inputs as stored plus the output and a few blocks, whatever the tensor
size. Blocks have a fixed size (BLOCK_ELEMENTS), so results do not depend on the thread count.

Methods take the two passes as a :class:`Passes` argument (default :data:`TORCH`, below), so
that their formula is written once: the CPU fast path
(:mod:`meldkit.kernels.combination`) runs the same method functions with numba passes.

The torch passes work on blocks of rows of about BLOCK_ELEMENTS elements converted to the math
dtype: each block's Gram products in the math dtype (one BLAS product), their sum over blocks
in float64; the combination block by block in the math dtype, cast to the output dtype. A
GPU's blocks stay on it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from meldkit.methods.inputs import output_dtype

__all__ = ["BLOCK_ELEMENTS", "Passes", "TORCH", "gram", "combine", "differences"]

# Elements per input and block: the blocks of all inputs stay in the CPU caches.
BLOCK_ELEMENTS = 1 << 16


def _row_view(x: torch.Tensor, rows: int) -> torch.Tensor:
    return x.reshape(rows, -1)


def _blocks(rows: int, length: int) -> list[tuple[int, int, int, int]]:
    """``(r0, r1, c0, c1)`` blocks of a ``(rows, length)`` view, about BLOCK_ELEMENTS each."""
    if length > BLOCK_ELEMENTS:  # long rows (a flattened tensor): split the columns
        return [
            (r, r + 1, c, min(length, c + BLOCK_ELEMENTS))
            for r in range(rows)
            for c in range(0, length, BLOCK_ELEMENTS)
        ]
    step = max(1, BLOCK_ELEMENTS // max(length, 1))
    return [(r, min(rows, r + step), 0, length) for r in range(0, rows, step)]


def _stack(
    inputs: Sequence[torch.Tensor], rows: int, block: tuple[int, int, int, int], dtype: torch.dtype
) -> torch.Tensor:
    """``(N, r1 - r0, c1 - c0)`` block of every input, in ``dtype``."""
    r0, r1, c0, c1 = block
    return torch.stack([_row_view(x, rows)[r0:r1, c0:c1].to(dtype) for x in inputs])


def differences(n_inputs: int, pairs: Sequence[tuple[int, int | None]]) -> torch.Tensor:
    """The ``A`` of :func:`gram` for vectors ``x_i - x_j`` (``j`` None: ``x_i`` itself)."""
    a = torch.zeros(len(pairs), n_inputs, dtype=torch.float64)
    for k, (i, j) in enumerate(pairs):
        a[k, i] += 1.0
        if j is not None:
            a[k, j] -= 1.0
    return a


def gram(
    inputs: Sequence[torch.Tensor], mix: torch.Tensor | None = None, rows: int = 1
) -> torch.Tensor:
    """``(rows, K, K)`` float64 Gram matrices of the vectors ``mix @ inputs`` (``mix`` K x N,
    float64, used in the math dtype; None: the inputs themselves), each row of the
    ``(rows, -1)`` view separately."""
    n = len(inputs)
    dtype = output_dtype(inputs, None)
    a = (mix if mix is not None else torch.eye(n, dtype=torch.float64)).to(dtype)
    # A GPU's blocks stay on it: the float64 sums too; the K x K result comes back to the CPU.
    device = inputs[0].device
    a = a.to(device)
    length = inputs[0].numel() // rows
    out = torch.zeros(rows, a.shape[0], a.shape[0], dtype=torch.float64, device=device)
    for block in _blocks(rows, length):
        x = _stack(inputs, rows, block, dtype)  # (N, r, c)
        v = torch.einsum("kn,nrc->rkc", a, x)  # (r, K, c): exact for differences of inputs
        # Each block's products in the math dtype (a BLAS product of a few thousand terms),
        # the blocks' sum in float64.
        out[block[0] : block[1]] += torch.bmm(v, v.transpose(1, 2)).to(torch.float64)
    return out.cpu()


def combine(
    inputs: Sequence[torch.Tensor], coeffs: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """``Σ_i coeffs[..., i] x_i`` in the math dtype (float32; float64 for float64 inputs), cast
    once to ``dtype``; ``coeffs`` (float64) is ``(N,)`` or ``(rows, N)`` (one set per row of
    the ``(rows, -1)`` view)."""
    rows = 1 if coeffs.dim() == 1 else coeffs.shape[0]
    math_dtype = output_dtype(inputs, None)
    c = coeffs.reshape(rows, -1).to(math_dtype)
    shape = inputs[0].shape
    length = inputs[0].numel() // rows
    c = c.to(inputs[0].device)
    out = torch.empty(rows, length, dtype=dtype, device=inputs[0].device)
    for r0, r1, c0, c1 in _blocks(rows, length):
        x = _stack(inputs, rows, (r0, r1, c0, c1), math_dtype)  # (N, r, c)
        out[r0:r1, c0:c1] = torch.einsum("rn,nrc->rc", c[r0:r1], x).to(dtype)
    return out.reshape(shape)


class Passes:
    """The two passes over the data a linear-combination method makes, with the contracts of
    :func:`gram` and :func:`combine`. This class runs them in torch; a fast path subclasses it
    (:class:`meldkit.kernels.combination.NumbaPasses`)."""

    def gram(
        self, inputs: Sequence[torch.Tensor], mix: torch.Tensor | None = None, rows: int = 1
    ) -> torch.Tensor:
        return gram(inputs, mix, rows)

    def combine(
        self, inputs: Sequence[torch.Tensor], coeffs: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor:
        return combine(inputs, coeffs, dtype)


TORCH = Passes()
