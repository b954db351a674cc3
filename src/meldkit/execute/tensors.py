"""Per-tensor work: load a tensor's inputs (LoRA applied, non-finite values reported) and
compute the output (cast to the work dtype, re-index vocabularies, run the method, cast once)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch

from meldkit.errors import MergeRuntimeError
from meldkit.io.dtypes import torch_dtype
from meldkit.io.reader import TensorReader
from meldkit.methods.registry import MergeContext, MergeFunction
from meldkit.plan.planner import MergePlan, TensorPlan

__all__ = ["TensorLoader", "compute_tensor"]


class TensorLoader:
    """Reads the inputs of one TensorPlan; thread-safe. LoRA adapters are applied here."""

    def __init__(self, plan: MergePlan, device: str, warn: Callable[[str], None]) -> None:
        self.plan = plan
        self.device = device
        self.warn = warn
        self.reader = TensorReader()
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

    def load(self, tensor: TensorPlan) -> list[torch.Tensor]:
        out = []
        # On a GPU the copy to the device happens here, in the loader thread, from pinned
        # memory, so it overlaps the math on the previous tensor. Byte copies stay on the CPU.
        device = "cpu" if (tensor.copy or tensor.integer) else self.device
        for src in tensor.sources:
            x = self.reader.read(src.info, device=device, pin_memory=device != "cpu")
            adapter = self._adapter(src.model)
            if adapter is not None:
                x = adapter.apply(src.name, x)
            if not tensor.integer and not tensor.copy and not bool(torch.isfinite(x).all()):
                key = f"{src.model}:{src.name}"
                if key not in self._warned:
                    self._warned.add(key)
                    self.warn(f"tensor {src.name} of {src.model} contains NaN or Inf values")
            out.append(x)
        return out

    def close(self) -> None:
        self.reader.close()


def _fit_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """Truncate a vocabulary-sized tensor to ``rows`` (--unsafe-truncate-embeddings)."""
    return x if x.shape[0] == rows else x.narrow(0, 0, rows)


def _reindex(tensor: TensorPlan, xs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Rebuild each model's vocabulary tensor in the output vocabulary (spec section 5)."""
    from meldkit.tokenizer import reindex_vocab_tensor

    vocab = tensor.vocabulary
    by_model = {src.model: x for src, x in zip(tensor.sources, xs)}
    out = reindex_vocab_tensor(vocab, by_model, axis=tensor.vocab_axis or 0, base_key=vocab.base_key, name=tensor.name)
    return [out[src.model] for src in tensor.sources]


def compute_tensor(
    tensor: TensorPlan,
    raw: Sequence[torch.Tensor],
    fn: MergeFunction,
    ctx: MergeContext,
    device: str,
) -> torch.Tensor:
    """The output tensor for ``tensor`` from its loaded inputs, on the CPU, in the output dtype."""
    out_dtype = torch_dtype(tensor.out_dtype)
    if tensor.copy:
        return raw[0].reshape(tensor.shape)
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
    for x in raw:
        if load is not None and x.dtype != load:
            x = x.to(load)  # MergeKit casts inputs to `dtype` when loading
        x = x.to(device=device, dtype=work)
        if tensor.vocabulary is None and tensor.vocab_axis is not None and x.shape != tensor.shape:
            x = _fit_rows(x, tensor.shape[0])
        xs.append(x)
    if tensor.vocabulary is not None:
        xs = _reindex(tensor, xs)
    result = fn(xs, tensor.base_index, tensor.shared, tensor.per_input, ctx)
    del xs
    if tuple(result.shape) != tensor.shape:
        raise MergeRuntimeError(
            f"the merge method produced shape {tuple(result.shape)} for {tensor.name}, expected {tensor.shape}"
        )
    return result.to(dtype=out_dtype).to("cpu").contiguous()
