"""The ``norm_match`` pre-pass: each input's whole-model task-vector norm, before the merge.

It streams the tensors the modifier applies to (``TensorPlan.norm_match``), one at a time,
through the run's own :class:`~meldkit.execute.tensors.TensorLoader` (so LoRA adapters, fused
experts and the recipe's ``dtype:`` apply exactly as in the merge), and sums
``||theta_t - theta_0||^2`` per input model in float64. Memory stays at one tensor's inputs.
The factors it returns are handed to the compute stage, which rescales each task vector
before the method sees it (:func:`meldkit.methods.modifiers.apply.rescale_inputs`).

The pre-pass reads every measured tensor once more than the merge does; ``meldkit plan``
says how many bytes that is. A ``--resume`` run measures again (the factors depend on the
whole model, not on the shards left to write).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch

from meldkit.execute.progress import Progress
from meldkit.execute.tensors import TensorLoader
from meldkit.execute.timings import RunStats, format_bytes, format_seconds
from meldkit.io.dtypes import torch_dtype
from meldkit.methods.modifiers import describe_factors, norm_factors
from meldkit.methods.modifiers.apply import squared_distance
from meldkit.plan.types import MergePlan, TensorPlan

__all__ = ["task_vector_norms", "run_norm_prepass"]


def _inputs(tensor: TensorPlan, loader: TensorLoader) -> list[torch.Tensor]:
    """The tensor's inputs as the merge sees them before the method: cast to ``dtype:`` when
    the recipe sets one, and cut to the output's rows (``--unsafe-truncate-embeddings``)."""
    load = torch_dtype(tensor.load_dtype) if tensor.load_dtype else None
    out = []
    for x in loader.load(tensor):
        if load is not None and x.dtype != load:
            x = x.to(load)
        if tensor.vocab_axis is not None and tuple(x.shape) != tensor.shape:
            x = x.narrow(0, 0, tensor.shape[0])
        out.append(x)
    return out


def task_vector_norms(
    tensors: Sequence[TensorPlan], loader: TensorLoader, progress: Progress | None = None
) -> dict[str, float]:
    """Per input model (its key), ``||theta_t - theta_0||`` over ``tensors``; the base has
    none. ``progress`` ticks once per tensor."""
    sums: dict[str, float] = {}
    for tensor in tensors:
        if tensor.base_index is None:
            continue  # the planner never marks such a tensor; nothing to measure against
        xs = _inputs(tensor, loader)
        base = xs[tensor.base_index]
        for i, (src, x) in enumerate(zip(tensor.sources, xs)):
            if i != tensor.base_index:
                sums[src.model] = sums.get(src.model, 0.0) + squared_distance(x, base)
        del xs, base
        if progress is not None:
            progress.tensor_done()
    return {key: math.sqrt(total) for key, total in sums.items()}


def run_norm_prepass(
    plan: MergePlan, loader: TensorLoader, progress: Progress, stats: RunStats
) -> dict[str, float]:
    """Measure the norms of ``plan``'s inputs (with a bar of its own) and return each input's
    factor ``c_t`` for :attr:`MergePlan.norm_match`; the run's notes say what was found."""
    assert plan.norm_match is not None, "only for a plan with norm_match"
    measured = [t for t in plan.tensors if t.norm_match]
    started = time.perf_counter()
    progress.start(len(measured), desc="norm_match pre-pass")
    try:
        norms = task_vector_norms(measured, loader, progress)
    finally:
        progress.close()
    seconds = time.perf_counter() - started
    nbytes = plan.prepass_bytes
    stats.add_read(seconds, nbytes)
    factors = norm_factors(norms, plan.norm_match)
    progress.note(
        f"{describe_factors(norms, factors, plan.norm_match)} "
        f"(pre-pass: {len(measured)} tensors, {format_bytes(nbytes)} in {format_seconds(seconds)})"
    )
    return factors
