"""``--no-intermediates``: an intermediate merged tensor by tensor as later stages read it.

A streamed stage is a *virtual checkpoint*: its plan gives the header (every tensor's name,
dtype and shape, as its skeleton folder shows the planner), and its tensors are computed on
demand by the stage's own per-tensor merge (:func:`meldkit.execute.tensors.compute_tensor`,
the function the engine runs), when a later stage's reader asks for them. :func:`attach` swaps
the later plan's sources from the skeleton's files for :class:`~meldkit.io.computed.
ComputedTensorInfo` entries, so the engine reads them like any tensor and nothing else in it
changes. The reader's read-ahead bounds how many are alive at once, and a
:class:`~meldkit.multi.pacing.Pacer` counts the merged tensors still alive against its bytes,
so a large one is merged just in time, not beside the computation of the one before. Each is
the very tensor the written run would have stored (same function, context and seed), so the
final bytes are the same.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from meldkit.execute.policy import EnginePolicy
from meldkit.execute.tensors import TensorLoader, compute_tensor, split_pieces
from meldkit.io.computed import ComputedTensorInfo
from meldkit.io.dtypes import torch_dtype
from meldkit.io.header import TensorInfo
from meldkit.methods.registry import MergeContext, load_merge_function
from meldkit.multi.pacing import Pacer
from meldkit.plan.types import MergePlan, TensorPlan, TensorSource

__all__ = ["StreamedStage", "attach"]


class StreamedStage:
    """A stage's output, merged one tensor at a time on request; thread-safe."""

    def __init__(
        self,
        plan: MergePlan,
        device: str,
        seed: int | None,
        policy: EnginePolicy,
        warn: Callable[[str], None],
    ) -> None:
        self.plan = plan
        self._device = device
        self._seed = seed
        self._loader = TensorLoader(plan, device, warn, policy)
        self._fn = load_merge_function(plan.method)
        self._tensors = {t.name: t for t in plan.tensors}
        self._lora = {k for k, m in plan.models.items() if m.lora_folder is not None}
        self._chunk = policy.chunk_elements
        # One tensor at a time: the readers of a later stage ask from several threads, and
        # merging two at once would only double the memory held.
        self._lock = threading.Lock()
        self.computed = 0

    def produce(self, name: str) -> torch.Tensor:
        """The merged tensor ``name`` on the CPU, in its output dtype.

        A tensor the engine would merge in blocks of rows (an element-wise method on a large
        tensor) is merged in the same blocks, each into its rows of the result: the working
        set stays that of one block, and the bytes are those a written run stores."""
        tensor: TensorPlan = self._tensors[name]
        with self._lock:
            pieces = list(split_pieces([tensor], self.plan.method, self._lora, self._chunk))
            if len(pieces) == 1:
                result = self._compute(tensor, None)
            else:
                result = torch.empty(tensor.shape, dtype=torch_dtype(tensor.out_dtype))
                for piece in pieces:
                    assert piece.rows is not None
                    result[piece.rows[0] : piece.rows[1]] = self._compute(tensor, piece.rows)
            self.computed += 1
        return result

    def _compute(self, tensor: TensorPlan, rows: tuple[int, int] | None) -> torch.Tensor:
        inputs = self._loader.load(tensor, rows)
        ctx = MergeContext(tensor.name, self._seed, self._device, tensor.out_dtype)
        native = self.plan.method.native_inputs
        result = compute_tensor(tensor, inputs, self._fn, ctx, self._device, rows, native)
        self._loader.check_result(tensor, rows, result)
        return result

    def close(self) -> None:
        self._loader.close()


def _computed(
    info: TensorInfo, owner: str, streams: Mapping[Path, StreamedStage], pacer: Pacer
) -> TensorInfo:
    stream = streams.get(info.file.parent)
    if stream is None:
        return info
    fields = {f.name: getattr(info, f.name) for f in dataclasses.fields(TensorInfo)}
    merge = functools.partial(stream.produce, info.name)
    return ComputedTensorInfo(**fields, produce=functools.partial(pacer.produce, owner, merge))


def _source(
    source: TensorSource, owner: str, streams: Mapping[Path, StreamedStage], pacer: Pacer
) -> TensorSource:
    if source.parts:
        parts = tuple(
            tuple(_computed(p, owner, streams, pacer) for p in group) for group in source.parts
        )
        if parts == source.parts:  # ComputedTensorInfo never equals a file's TensorInfo
            return source
        return dataclasses.replace(source, parts=parts)
    info = _computed(source.info, owner, streams, pacer)
    return source if info is source.info else dataclasses.replace(source, info=info)


def attach(
    plan: MergePlan, streams: Mapping[Path, StreamedStage], pacer: Pacer | None = None
) -> int:
    """Make ``plan`` read the tensors of the skeleton folders in ``streams`` from those streamed
    stages, paced by ``pacer`` (:mod:`meldkit.multi.pacing`; None: never held back); returns
    how many sources now stream."""
    pacer = pacer or Pacer(budget=sys.maxsize)
    n = 0
    for t in plan.tensors:
        sources = tuple(_source(s, t.name, streams, pacer) for s in t.sources)
        n += sum(a is not b for a, b in zip(sources, t.sources))
        t.sources = sources
    return n
