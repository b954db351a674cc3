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

Two implementations:

* CPU kernels (numba, :mod:`meldkit.methods.kernels_combination`), used when numba is
  installed and the inputs are contiguous CPU tensors of one shape in bf16, fp32 or fp16
  (fp16 and mixed dtypes are widened to float32 first). Work items are chunks of at most
  BLOCK_ELEMENTS elements of one row, run on torch's thread count. The Gram kernel forms
  ``v = A x`` per element in float32 (for the ±1/0 rows of :func:`differences` exactly
  ``x_i - x_j``, as the torch path) and sums the products ``v_k v_l`` in float64 (each
  product is exact in float64) in a fixed interleaved order; each item's partial is then
  added per row in item order. This is far more accurate than the torch path's float32
  blocks (relative error ~1e-13 instead of ~1e-6), so Gram matrices differ from it in the
  last digits. The combination kernel computes ``Σ c_i x_i`` in float32 in input order and
  writes float32 or bfloat16 (rounded to nearest even) directly; other output dtypes are
  cast from float32.
* torch, for everything else (float64 inputs, CUDA tensors, no numba): blocks of rows of
  about BLOCK_ELEMENTS elements converted to the math dtype; each block's Gram products in
  the math dtype (one BLAS product), their sum over blocks in float64; the combination block
  by block in the math dtype, cast to the output dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

import numpy as np
import torch

from meldkit.methods import kernel_runner
from meldkit.methods.inputs import output_dtype

__all__ = ["BLOCK_ELEMENTS", "gram", "combine", "differences", "uses_kernels"]

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


def _kernels(inputs: Sequence[torch.Tensor]) -> ModuleType | None:
    """The numba kernels when they cover ``inputs`` (CPU, bf16/fp32/fp16, one shape,
    contiguous), else None: float64 inputs, other devices and no numba take the torch path."""
    module = kernel_runner.load("kernels_combination")
    if module is None or not kernel_runner.cpu_tensors(inputs, "cpu"):
        return None
    return module


def uses_kernels(inputs: Sequence[torch.Tensor]) -> bool:
    """Whether :func:`gram` and :func:`combine` run the numba kernels for ``inputs``."""
    return _kernels(inputs) is not None


def _layout(numel: int, rows: int) -> tuple[int, int, int]:
    """``(length, per_row, items)`` of the kernels' work items: each row of the ``(rows,
    length)`` view cut into ``per_row`` chunks of BLOCK_ELEMENTS (the last ragged)."""
    if numel == 0:
        return 0, 1, 0
    if rows <= 0 or numel % rows:
        raise ValueError(f"cannot view {numel} elements as {rows} rows")
    length = numel // rows
    per_row = kernel_runner.chunk_count(length, BLOCK_ELEMENTS)
    return length, per_row, (rows * per_row if length else 0)


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
    float64, used in the math dtype; None: the inputs themselves), each row of the
    ``(rows, -1)`` view separately."""
    n = len(inputs)
    dtype = output_dtype(inputs, None)
    a = (mix if mix is not None else torch.eye(n, dtype=torch.float64)).to(dtype)
    module = _kernels(inputs)
    if module is not None:
        return _gram_kernel(module, inputs, a, rows)
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
        out[block[0]:block[1]] += torch.bmm(v, v.transpose(1, 2)).to(torch.float64)
    return out.cpu()


def combine(inputs: Sequence[torch.Tensor], coeffs: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``Σ_i coeffs[..., i] x_i`` in the math dtype (float32; float64 for float64 inputs), cast
    once to ``dtype``; ``coeffs`` (float64) is ``(N,)`` or ``(rows, N)`` (one set per row of
    the ``(rows, -1)`` view)."""
    rows = 1 if coeffs.dim() == 1 else coeffs.shape[0]
    math_dtype = output_dtype(inputs, None)
    c = coeffs.reshape(rows, -1).to(math_dtype)
    module = _kernels(inputs)
    if module is not None:
        return _combine_kernel(module, inputs, c, dtype)
    shape = inputs[0].shape
    length = inputs[0].numel() // rows
    c = c.to(inputs[0].device)
    out = torch.empty(rows, length, dtype=dtype, device=inputs[0].device)
    for r0, r1, c0, c1 in _blocks(rows, length):
        x = _stack(inputs, rows, (r0, r1, c0, c1), math_dtype)  # (N, r, c)
        out[r0:r1, c0:c1] = torch.einsum("rn,nrc->rc", c[r0:r1], x).to(dtype)
    return out.reshape(shape)


def _gram_kernel(module: ModuleType, inputs: Sequence[torch.Tensor], a: torch.Tensor,
                 rows: int) -> torch.Tensor:
    """:func:`gram` with the numba kernel: per work item a float64 ``K x K`` partial (exact
    float64 products of the float32 ``v``), summed over each row's items in order."""
    k = a.shape[0]
    length, per_row, items = _layout(inputs[0].numel(), rows)
    if items == 0:
        return torch.zeros(rows, k, k, dtype=torch.float64)
    xs = tuple(kernel_runner.stored_arrays(inputs))
    partial = np.zeros((items, k, k), dtype=np.float64)
    kernel_runner.parallel(module.gram, items, xs, a.contiguous().numpy(), per_row, length, BLOCK_ELEMENTS, partial, lead=1)
    out = partial.reshape(rows, per_row, k, k)
    total = out[:, 0].copy()
    for c in range(1, per_row):  # in item order: independent of the thread count
        total += out[:, c]
    return torch.from_numpy(total)


def _combine_kernel(module: ModuleType, inputs: Sequence[torch.Tensor], c: torch.Tensor,
                    dtype: torch.dtype) -> torch.Tensor:
    """:func:`combine` with the numba kernel, writing float32 or bfloat16 directly (other
    output dtypes: float32, then cast)."""
    shape = inputs[0].shape
    rows = c.shape[0]
    length, per_row, items = _layout(inputs[0].numel(), rows)
    out = kernel_runner.output_buffer(inputs[0].numel(), dtype)
    if items:
        xs = tuple(kernel_runner.stored_arrays(inputs))
        kernel_runner.parallel(module.combine, items, xs, c.contiguous().numpy(), per_row, length,
                               BLOCK_ELEMENTS, kernel_runner.as_numpy(out), out.dtype == torch.bfloat16, lead=1)
    return (out if out.dtype == dtype else out.to(dtype)).reshape(shape)
