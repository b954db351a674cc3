"""The engine writing into a dict instead of shards: a planned merge computed tensor by tensor
into ``{name: tensor}`` (for instance a loaded model's parameters), with no disk round trip.

Each tensor goes through the same steps as in :mod:`meldkit.execute.runner` (the loader, LoRA
adapters, vocabulary re-indexing, the ``norm_match`` pre-pass, :class:`ComputeStage`), so a
tensor merged here has the bytes ``meldkit merge`` writes for it. :class:`CachingLoader` keeps
the inputs it read, for callers that merge the same inputs many times (an evolutionary
search): later merges read nothing.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping

import torch

from meldkit.execute.pipeline import ComputeStage
from meldkit.execute.tensors import Piece, Rows, TensorLoader
from meldkit.methods.registry import load_merge_function
from meldkit.plan.types import MergePlan, TensorPlan

__all__ = ["CachingLoader", "merge_plan_into"]


class CachingLoader(TensorLoader):
    """A :class:`TensorLoader` that keeps every input tensor it read, keyed by model and
    tensor name, until :meth:`clear`. Merge functions never modify their inputs, so a cached
    tensor can be handed out again as it is."""

    def __init__(self, plan: MergePlan, device: str, warn: Callable[[str], None]) -> None:
        super().__init__(plan, device, warn)
        self._cache: dict[tuple[str, str], torch.Tensor] = {}

    @property
    def cached_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._cache.values())

    def load(self, tensor: TensorPlan, rows: Rows | None = None) -> list[torch.Tensor]:
        if rows is not None:
            return super().load(tensor, rows)
        keys = [(s.model, s.name) for s in tensor.sources]
        if any(k not in self._cache for k in keys):
            for key, x in zip(keys, super().load(tensor)):
                # A memory-mapped view would pin the file's pages; the cache owns its copy.
                self._cache[key] = x.clone() if not x.is_contiguous() else x
        return [self._cache[k] for k in keys]

    def clear(self) -> None:
        self._cache.clear()


def merge_plan_into(
    plan: MergePlan,
    out: MutableMapping[str, torch.Tensor],
    *,
    device: str = "cpu",
    seed: int | None = None,
    loader: TensorLoader | None = None,
    warn: Callable[[str], None] | None = None,
) -> list[str]:
    """Compute every tensor of ``plan`` into ``out`` and return their names.

    A tensor whose name is already in ``out`` is written in place (``copy_``: its dtype and
    device are kept, e.g. a model's float32 parameters); others are added, in the plan's
    output dtype, on ``device``. ``loader``: a (caching) loader to reuse across calls; by
    default one is opened and closed here.
    """
    from meldkit.methods.modifiers import norm_factors

    sink = warn or (lambda message: None)
    own = loader is None
    active = loader if loader is not None else TensorLoader(plan, device, sink)
    try:
        factors = None
        if plan.norm_match is not None:
            from meldkit.execute.norm_prepass import task_vector_norms

            measured = [t for t in plan.tensors if t.norm_match]
            factors = norm_factors(task_vector_norms(measured, active, None), plan.norm_match)
        compute = ComputeStage(
            plan, load_merge_function(plan.method), device, seed, active, factors
        )
        written = []
        with torch.no_grad():
            for tensor in plan.tensors:
                inputs = list(active.load(tensor))
                result = compute.run(Piece(tensor, None, True), inputs)
                target = out.get(tensor.name)
                if target is None:
                    out[tensor.name] = result.to(device)
                else:
                    target.copy_(result)
                written.append(tensor.name)
        return written
    finally:
        if own:
            active.close()
