"""The fast path of the linear-combination methods (slerp, nuslerp, multislerp, karcher,
model_stock): their reference functions, run with numba passes instead of torch's.

Each of these methods is a Gram pass and a combination pass over its inputs
(:class:`meldkit.methods.combination.Passes`); everything between them works on K x K
matrices. :class:`NumbaPasses` makes the two passes with the kernels of
:mod:`meldkit.kernels.combination_numba` over the inputs as stored (bf16 bits or float32;
fp16 and mixed dtypes are widened first). Work items are chunks of at most
``BLOCK_ELEMENTS`` elements of one row, run on torch's thread count:

* the Gram kernel forms ``v = A x`` per element in float32 (for the ±1/0 rows of
  :func:`~meldkit.methods.combination.differences` exactly ``x_i - x_j``, as the torch
  pass) and sums the products ``v_k v_l`` in float64 (each product is exact in float64) in a
  fixed interleaved order; each item's partial is then added per row in item order. This is
  more accurate than the torch pass's float32 blocks (relative error ~1e-13 instead of up to
  ~1e-5), so the Gram matrices differ from it in the last digits, and the methods' outputs by
  up to about 2e-6 of their largest value: the tolerances tests/kernels/test_combination.py
  pins;
* the combination kernel computes ``Σ c_i x_i`` in float32 in input order and writes float32
  or bfloat16 (rounded to nearest even) directly; other output dtypes are cast from float32.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch

from meldkit.kernels import runner
from meldkit.methods import karcher as karcher_method
from meldkit.methods import model_stock as model_stock_method
from meldkit.methods import multislerp as multislerp_method
from meldkit.methods import nuslerp as nuslerp_method
from meldkit.methods import slerp as slerp_method
from meldkit.methods.combination import BLOCK_ELEMENTS, Passes
from meldkit.methods.registry import FastPath, MergeContext

__all__ = [
    "NumbaPasses",
    "NUMBA",
    "supports",
    "slerp",
    "nuslerp",
    "multislerp",
    "karcher",
    "model_stock",
]


def _layout(numel: int, rows: int) -> tuple[int, int, int]:
    """``(length, per_row, items)`` of the kernels' work items: each row of the ``(rows,
    length)`` view cut into ``per_row`` chunks of BLOCK_ELEMENTS (the last ragged)."""
    if numel == 0:
        return 0, 1, 0
    if rows <= 0 or numel % rows:
        raise ValueError(f"cannot view {numel} elements as {rows} rows")
    length = numel // rows
    per_row = runner.chunk_count(length, BLOCK_ELEMENTS)
    return length, per_row, (rows * per_row if length else 0)


class NumbaPasses(Passes):
    """:class:`~meldkit.methods.combination.Passes` on the numba kernels (CPU tensors in bf16,
    fp32 or fp16 of one shape; see :func:`supports`)."""

    def gram(
        self, inputs: Sequence[torch.Tensor], mix: torch.Tensor | None = None, rows: int = 1
    ) -> torch.Tensor:
        """Per work item a float64 ``K x K`` partial (exact float64 products of the float32
        ``v``), summed over each row's items in order."""
        module = runner.load("combination_numba")
        assert module is not None
        a = (mix if mix is not None else torch.eye(len(inputs), dtype=torch.float64)).to(
            torch.float32
        )
        k = a.shape[0]
        length, per_row, items = _layout(inputs[0].numel(), rows)
        if items == 0:
            return torch.zeros(rows, k, k, dtype=torch.float64)
        xs = tuple(runner.stored_arrays(inputs))
        partial_sums = np.zeros((items, k, k), dtype=np.float64)
        runner.parallel(
            module.gram,
            items,
            xs,
            a.contiguous().numpy(),
            per_row,
            length,
            BLOCK_ELEMENTS,
            partial_sums,
            lead=1,
        )
        out = partial_sums.reshape(rows, per_row, k, k)
        total = out[:, 0].copy()
        for c in range(1, per_row):  # in item order: independent of the thread count
            total += out[:, c]
        return torch.from_numpy(total)

    def combine(
        self, inputs: Sequence[torch.Tensor], coeffs: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor:
        """``Σ c_i x_i`` in float32, written as float32 or bfloat16 directly (other output
        dtypes: float32, then cast)."""
        module = runner.load("combination_numba")
        assert module is not None
        rows = 1 if coeffs.dim() == 1 else coeffs.shape[0]
        c = coeffs.reshape(rows, -1).to(torch.float32)
        shape = inputs[0].shape
        length, per_row, items = _layout(inputs[0].numel(), rows)
        out = runner.output_buffer(inputs[0].numel(), dtype)
        if items:
            xs = tuple(runner.stored_arrays(inputs))
            runner.parallel(
                module.combine,
                items,
                xs,
                c.contiguous().numpy(),
                per_row,
                length,
                BLOCK_ELEMENTS,
                runner.as_numpy(out),
                out.dtype == torch.bfloat16,
                lead=1,
            )
        return (out if out.dtype == dtype else out.to(dtype)).reshape(shape)


NUMBA = NumbaPasses()


def supports(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: MergeContext,
) -> bool:
    """Numba is installed and the inputs are contiguous CPU tensors of one shape in bf16, fp32
    or fp16 (float64 inputs and other devices take the torch passes)."""
    return runner.load("combination_numba") is not None and runner.cpu_tensors(inputs, "cpu")


slerp = FastPath(supports, partial(slerp_method.slerp, passes=NUMBA))
nuslerp = FastPath(supports, partial(nuslerp_method.nuslerp, passes=NUMBA))
multislerp = FastPath(supports, partial(multislerp_method.multislerp, passes=NUMBA))
karcher = FastPath(supports, partial(karcher_method.karcher, passes=NUMBA))
model_stock = FastPath(supports, partial(model_stock_method.model_stock, passes=NUMBA))
