"""Per-tensor work: load a tensor's inputs (LoRA applied, non-finite values reported) and
compute the output (cast to the work dtype, re-index vocabularies, run the method, cast once)."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from meldkit.errors import MergeRuntimeError
from meldkit.execute import heap
from meldkit.execute.policy import DEFAULT_POLICY, EnginePolicy
from meldkit.io.dtypes import torch_dtype
from meldkit.io.header import TensorInfo
from meldkit.io.reader import TensorReader
from meldkit.methods.modifiers.apply import apply_lines, rescale_inputs
from meldkit.methods.registry import MergeContext, MergeFunction, MethodSpec
from meldkit.plan.planner import MergePlan, TensorPlan

__all__ = ["TensorLoader", "compute_tensor", "Piece", "compute_order", "split_pieces"]

Rows = tuple[int, int]


@dataclass(frozen=True)
class Piece:
    """A unit of work: a whole tensor (``rows`` None) or a block of its rows."""

    tensor: TensorPlan
    rows: Rows | None
    last: bool  # the tensor's final piece

    @property
    def input_bytes(self) -> int:
        total = sum(s.info.nbytes for s in self.tensor.sources)
        if self.rows is None or not self.tensor.shape or not self.tensor.shape[0]:
            return total
        return total * (self.rows[1] - self.rows[0]) // self.tensor.shape[0]


def _chunkable(tensor: TensorPlan, method: MethodSpec, lora_models: set[str]) -> bool:
    return (
        (tensor.copy or method.elementwise_for(tensor.shared, tensor.per_input))
        and not tensor.integer
        and tensor.vocabulary is None
        and len(tensor.shape) >= 1
        and all(
            type(s.info) is TensorInfo and s.info.shape == tensor.shape and not s.parts
            for s in tensor.sources
        )
        and not any(s.model in lora_models for s in tensor.sources)  # LoRA needs whole weights
    )


def compute_order(
    tensors: Sequence[TensorPlan], gap_bytes: int = 0, big_share: float = DEFAULT_POLICY.big_share
) -> list[TensorPlan]:
    """The order in which to compute ``tensors`` (the writer puts each in place, in any order):
    the plan's, except that each big tensor (at least ``big_share`` of the largest one's
    elements; :class:`~meldkit.execute.policy.EnginePolicy`) is moved forward, to just
    after the first point where at least one small tensor and ``gap_bytes`` of small tensors'
    input (the executor's read-ahead) have followed the previous big one. A big tensor never
    moves later, and a small one only by the big ones pulled ahead of it (for a usual
    checkpoint, the LM head), so output shards still complete in about the plan's order,
    which is what ``--resume`` keeps.

    Ending on a big tensor (an LM head is usually last) leaves its whole computation without
    reads to overlap, then its write and the disk's write-back of it before the final fsync:
    about 0.5 s of a `med` merge with little to do. The small tensors between two big ones keep
    the next big one's inputs from being read ahead while the previous one is still held."""
    sizes = [math.prod(t.shape) for t in tensors]
    threshold = big_share * max(sizes, default=0)
    is_big = [bool(n) and n >= threshold for n in sizes]
    bigs = [i for i, b in enumerate(is_big) if b]
    placed = [False] * len(tensors)
    order: list[TensorPlan] = []
    nxt = 0  # the first big tensor not placed yet, in plan order
    # Input bytes and count of small tensors since the last big one: at the start, as if
    # enough had passed, so the first big tensor may come first.
    gap, smalls = gap_bytes, 1
    for i, t in enumerate(tensors):
        while nxt < len(bigs) and placed[bigs[nxt]]:
            nxt += 1
        if is_big[i]:
            if not placed[i]:  # at its own place at the latest
                order.append(t)
                placed[i] = True
                gap, smalls = 0, 0
            continue
        if nxt < len(bigs) and smalls and gap >= gap_bytes:
            order.append(tensors[bigs[nxt]])  # pulled forward
            placed[bigs[nxt]] = True
            gap, smalls = 0, 0
        order.append(t)
        gap += sum(s.info.nbytes for s in t.sources)
        smalls += 1
    return order


def split_pieces(
    tensors: Iterable[TensorPlan], method: MethodSpec, lora_models: set[str], max_elements: int
) -> Iterator[Piece]:
    """The work items for ``tensors``, in order: element-wise tensors of more than
    ``max_elements`` elements in blocks of rows of at most that many (at least one row)."""
    for t in tensors:
        numel = math.prod(t.shape)
        if numel <= max_elements or not _chunkable(t, method, lora_models):
            yield Piece(t, None, True)
            continue
        row = max(1, numel // t.shape[0])
        step = max(1, max_elements // row)
        for r0 in range(0, t.shape[0], step):
            r1 = min(t.shape[0], r0 + step)
            yield Piece(t, (r0, r1), r1 == t.shape[0])


def _rows_of(info: TensorInfo, rows: Rows) -> TensorInfo:
    row_bytes = info.nbytes // info.shape[0]
    return replace(
        info,
        shape=(rows[1] - rows[0], *info.shape[1:]),
        start=info.start + rows[0] * row_bytes,
        end=info.start + rows[1] * row_bytes,
    )


class TensorLoader:
    """Reads the inputs of one TensorPlan; thread-safe. LoRA adapters are applied here.

    ``policy`` decides which inputs are mapped and before which reads the heap is trimmed."""

    def __init__(
        self,
        plan: MergePlan,
        device: str,
        warn: Callable[[str], None],
        policy: EnginePolicy = DEFAULT_POLICY,
    ) -> None:
        self.plan = plan
        self.device = device
        self.warn = warn
        self.reader = TensorReader(map_min_bytes=policy.map_min_bytes)
        self._trim_bytes = policy.trim_heap_bytes
        self._adapters: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._warned: set[str] = set()

    def _adapter(self, model: str) -> Any:
        with self._lock:
            if model not in self._adapters:
                folder = self.plan.models[model].lora_folder
                if folder is None:
                    self._adapters[model] = None
                else:
                    from meldkit.io.lora import LoraAdapter

                    adapter = LoraAdapter.open(folder)
                    adapter.bind(self.plan.models[model].index.tensors)
                    self._adapters[model] = adapter
            return self._adapters[model]

    def load(self, tensor: TensorPlan, rows: Rows | None = None) -> list[torch.Tensor]:
        """The inputs of ``tensor`` (only ``rows`` of them when given), in source order."""
        out = []
        whole = sum(s.info.nbytes for s in tensor.sources if not s.parts)
        if self._trim_bytes is not None and whole >= self._trim_bytes:
            heap.release_free_memory()  # before, not on top of, this large allocation
        # On a GPU the copy to the device happens here, in the loader thread, from pinned
        # memory, so it overlaps the math on the previous tensor. Byte copies stay on the CPU.
        device = "cpu" if (tensor.copy or tensor.integer) else self.device
        for src in tensor.sources:
            if src.parts:
                # Fused MoE experts: (experts, sum of part rows, ...) from the per-expert tensors.
                x = torch.stack(
                    [torch.cat([self.reader.read(p) for p in group], dim=0) for group in src.parts]
                )
                x = x.to(device)
            else:
                info = src.info if rows is None else _rows_of(src.info, rows)
                x = self.reader.read(info, device=device, pin_memory=device != "cpu")
            adapter = self._adapter(src.model)
            if adapter is not None:
                x = adapter.apply(src.name, x)
            out.append(x)
        return out

    def check_result(self, tensor: TensorPlan, rows: Rows | None, result: torch.Tensor) -> None:
        """Warn about NaN/Inf. Scanning every input costs more than the merge itself, so the
        (n times smaller) result is checked, and only a non-finite result has its inputs read
        again to name the culprits: a NaN or Inf in an input reaches the result through every
        method's sums, so none is missed that matters."""
        if tensor.integer or not result.is_floating_point() or _all_finite(result):
            return
        culprits = []
        for src, x in zip(tensor.sources, self.load(tensor, rows)):
            if not _all_finite(x):
                culprits.append(src)
        for src in culprits:
            self._warn_once(
                f"{src.model}:{src.name}",
                f"tensor {src.name} of {src.model} contains NaN or Inf values",
            )
        if not culprits:
            self._warn_once(
                f"out:{tensor.name}",
                f"the merged tensor {tensor.name} contains NaN or Inf values "
                "although its inputs are finite (check the weights and parameters)",
            )

    def _warn_once(self, key: str, message: str) -> None:
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        self.warn(message)

    def close(self) -> None:
        self.reader.close()


def _all_finite(x: torch.Tensor) -> bool:
    # One reduction pass without a temporary mask; a non-finite sum (NaN, Inf, or an overflow
    # of huge values) triggers the exact check.
    if not x.is_floating_point() or x.numel() == 0:
        return True
    return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())


def _fit_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """Truncate a vocabulary-sized tensor to ``rows`` (--unsafe-truncate-embeddings)."""
    return x if x.shape[0] == rows else x.narrow(0, 0, rows)


def _reindex(tensor: TensorPlan, xs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Rebuild each model's vocabulary tensor in the output vocabulary (spec section 5)."""
    from meldkit.tokenizer import reindex_vocab_tensor

    vocab = tensor.vocabulary
    by_model = {src.model: x for src, x in zip(tensor.sources, xs)}
    out = reindex_vocab_tensor(
        vocab, by_model, axis=tensor.vocab_axis or 0, base_key=vocab.base_key, name=tensor.name
    )
    return [out[src.model] for src in tensor.sources]


def compute_tensor(
    tensor: TensorPlan,
    raw: list[torch.Tensor],
    fn: MergeFunction,
    ctx: MergeContext,
    device: str,
    rows: Rows | None = None,
    native: bool = False,
    result_device: str = "cpu",
    input_factors: Sequence[float] | None = None,
) -> torch.Tensor:
    """The output tensor for ``tensor`` (or its block ``rows``) from its loaded inputs, on
    ``result_device`` (the CPU, where the writer takes it; an in-memory merge may keep it on the
    math device), in the output dtype. ``raw`` is consumed: each input is released once
    converted.

    The modifiers apply around the method: with ``input_factors`` (one per input, from the
    ``norm_match`` pre-pass) the method receives ``base + c_t * (x_t - base)``; with
    ``tensor.lines_scale`` its result becomes ``base + s * (result - base)`` (in the result's
    dtype). Rescaling works in the work dtype, so the caller passes ``native`` False with it."""
    out_dtype = torch_dtype(tensor.out_dtype)
    shape = tensor.shape if rows is None else (rows[1] - rows[0], *tensor.shape[1:])
    if tensor.copy:
        return raw[0].reshape(shape)
    if tensor.integer:
        first = raw[0]
        for other in raw[1:]:
            if not torch.equal(first, other):
                raise MergeRuntimeError(
                    f"integer tensor {tensor.name} differs between the inputs and cannot be merged",
                    hint="integer buffers are copied only when every input has the same values",
                )
        return first.to(out_dtype)
    work = torch_dtype(tensor.work_dtype)
    load = torch_dtype(tensor.load_dtype) if tensor.load_dtype else None
    xs = []
    raw.reverse()
    while raw:
        x = raw.pop()  # drop the raw bytes as soon as they are converted
        if load is not None and x.dtype != load:
            x = x.to(load)  # MergeKit casts inputs to `dtype` when loading
        # A method with native inputs upcasts itself (fused into its first pass).
        x = (
            x.to(device=device)
            if native and tensor.vocabulary is None
            else x.to(device=device, dtype=work)
        )
        if tensor.vocabulary is None and tensor.vocab_axis is not None and tuple(x.shape) != shape:
            x = _fit_rows(x, shape[0])
        xs.append(x)
    if tensor.vocabulary is not None:
        xs = _reindex(tensor, xs)
    base_index = tensor.base_index
    if input_factors is not None and tensor.norm_match and base_index is not None:
        xs = rescale_inputs(xs, base_index, input_factors)
    # Kept for LiNeS: methods read their inputs and never write into them.
    base = xs[base_index] if tensor.lines_scale is not None and base_index is not None else None
    result = fn(xs, base_index, tensor.shared, tensor.per_input, ctx)
    del xs
    if base is not None and tensor.lines_scale is not None:
        result = apply_lines(result, base, tensor.lines_scale)
        del base
    if tuple(result.shape) != shape:
        raise MergeRuntimeError(
            f"the merge method produced shape {tuple(result.shape)} for {tensor.name}, expected {shape}"
        )
    return result.to(dtype=out_dtype).to(result_device).contiguous()
