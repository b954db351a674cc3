"""Reading the inputs' tensors, with each model's LoRA adapter applied on the fly."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING

import torch

from meldkit.io.lora import LoraAdapter
from meldkit.io.reader import TensorReader

if TYPE_CHECKING:
    from meldkit.plan.models import InputModelInfo

__all__ = ["SourceReader"]


class SourceReader:
    """Reads ``(model key, tensor name)`` from the plan's inputs; a context manager.

    A ``model+lora`` input gets ``W + scale * B @ A`` as merges do (the adapter is opened once,
    when its first tensor is read).
    """

    def __init__(self, models: dict[str, InputModelInfo]) -> None:
        self._models = models
        self._reader = TensorReader()
        self._adapters: dict[str, LoraAdapter] = {}

    def read(self, model: str, name: str) -> torch.Tensor:
        info = self._models[model]
        tensor = self._reader.read(info.index.tensors[name])
        if info.lora_folder is None:
            return tensor
        adapter = self._adapters.get(model)
        if adapter is None:
            adapter = self._adapters[model] = LoraAdapter.open(info.lora_folder)
            adapter.bind(info.index.tensors)  # PEFT's names to the checkpoint's
        return adapter.apply(name, tensor)

    def __enter__(self) -> SourceReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._reader.close()
