"""Blocked building blocks for methods whose output is a linear combination of their inputs.

slerp-like methods (multislerp, karcher, model_stock) only need, from the whole tensors, the
inner products of a few vectors made from the inputs (their Gram matrix); every later step
works on a K x K matrix, and the result is ``Σ c_i x_i`` for scalar coefficients ``c``. So a
merge is two passes over the inputs as stored (bf16 stays bf16), in blocks of rows:

1. :func:`gram`: ``G = V Vᵀ`` with ``V = A X`` (``X``: the inputs as rows, ``A``: K x N, e.g.
   task vectors ``x_i - b``): each block's products in the math dtype (float32, or float64
   for float64 inputs), their sum over blocks in float64;
2. :func:`combine`: ``Σ c_i x_i`` block by block in the math dtype, cast once to the output
   dtype.

Both accept per-row groups (``rows``): the tensor is viewed as ``(rows, -1)`` and each row
gets its own Gram matrix and coefficients (model_stock's ``filter_wise``). Memory is the
inputs as stored plus the output and a few blocks, whatever the tensor size. Blocks have a
fixed size, so results do not depend on the thread count.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from meldkit.methods.inputs import output_dtype

__all__ = ["BLOCK_ELEMENTS", "gram", "combine", "differences"]

# Elements per input and block: the blocks of all inputs stay in the CPU caches.
BLOCK_ELEMENTS = 1 << 16


def _row_view(x: torch.Tensor, rows: int) -> torch.Tensor:
    return x.reshape(rows, -1)


def _blocks(rows: int, length: int) -> list[tuple[int, int, int, int]]:
    """``(r0, r1, c0, c1)`` blocks of a ``(rows, length)`` view, about BLOCK_ELEMENTS each."""
    if length > BLOCK_ELEMENTS:  # long rows (a flattened tensor): split the columns
        return [(r, r + 1, c, min(length, c + BLOCK_ELEMENTS))
                for r in range(rows) for c in range(0, length, BLOCK_ELEMENTS)]
    step = max(1, BLOCK_ELEMENTS // max(length, 1))
    return [(r, min(rows, r + step), 0, length) for r in range(0, rows, step)]


def _stack(inputs: Sequence[torch.Tensor], rows: int, block: tuple[int, int, int, int],
           dtype: torch.dtype) -> torch.Tensor:
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


def gram(inputs: Sequence[torch.Tensor], mix: torch.Tensor | None = None, rows: int = 1) -> torch.Tensor:
    """``(rows, K, K)`` float64 Gram matrices of the vectors ``mix @ inputs`` (``mix`` K x N,
    float64; None: the inputs themselves), each row of the ``(rows, -1)`` view separately."""
    n = len(inputs)
    dtype = output_dtype(inputs, None)
    a = (mix if mix is not None else torch.eye(n, dtype=torch.float64)).to(dtype)
    length = inputs[0].numel() // rows
    out = torch.zeros(rows, a.shape[0], a.shape[0], dtype=torch.float64)
    for block in _blocks(rows, length):
        x = _stack(inputs, rows, block, dtype)  # (N, r, c)
        v = torch.einsum("kn,nrc->rkc", a, x)  # (r, K, c): exact for differences of inputs
        # Each block's products in the math dtype (a BLAS product of a few thousand terms),
        # the blocks' sum in float64.
        out[block[0]:block[1]] += torch.bmm(v, v.transpose(1, 2)).to(torch.float64)
    return out


def combine(inputs: Sequence[torch.Tensor], coeffs: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``Σ_i coeffs[..., i] x_i`` in float64, cast once to ``dtype``; ``coeffs`` is ``(N,)`` or
    ``(rows, N)`` (one set per row of the ``(rows, -1)`` view)."""
    rows = 1 if coeffs.dim() == 1 else coeffs.shape[0]
    math_dtype = output_dtype(inputs, None)
    c = coeffs.reshape(rows, -1).to(math_dtype)
    shape = inputs[0].shape
    length = inputs[0].numel() // rows
    out = torch.empty(rows, length, dtype=dtype)
    for r0, r1, c0, c1 in _blocks(rows, length):
        x = _stack(inputs, rows, (r0, r1, c0, c1), math_dtype)  # (N, r, c)
        out[r0:r1, c0:c1] = torch.einsum("rn,nrc->rc", c[r0:r1], x).to(dtype)
    return out.reshape(shape)
