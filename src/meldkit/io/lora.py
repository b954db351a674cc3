"""PEFT LoRA adapters applied on the fly, one tensor at a time.

MergeKit loads the whole base model with transformers, runs PEFT's ``merge_and_unload`` and
writes a merged copy to ``--lora-merge-cache`` before merging. Here the adapter is opened once
and each base tensor is corrected as it is read: ``W + scale * (B @ A)``, in float32, cast back
to ``W``'s dtype. No copy of the model is written and no model class is instantiated.

Supported, as PEFT merges them: ``r`` and ``lora_alpha`` with ``rank_pattern`` /
``alpha_pattern`` (pattern keys are regexes matched against a dotted suffix of the module
name), ``use_rslora`` (scale ``alpha / sqrt(r)``), ``fan_in_fan_out`` (GPT-2 ``Conv1D``),
embedding LoRA (``lora_embedding_A/B``), ``lora_B.bias`` (``lora_bias``) and full tensors
saved through ``modules_to_save`` or ``bias: all``, which replace the base's.
DoRA, convolution LoRA and other PEFT methods are rejected with an :class:`InputError`.

The planner has already checked every shape against the base model from the headers
(:mod:`meldkit.io.lora_check`); the checks in :meth:`LoraAdapter.apply` are a second line of
defence.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from meldkit.errors import InputError
from meldkit.io.lora_index import AdapterIndex, LoraModule, pattern_value, read_adapter_config

__all__ = ["LoraAdapter", "LoraModule", "pattern_value"]


class LoraAdapter(AdapterIndex):
    """An opened PEFT LoRA adapter folder (``adapter_config.json`` + weights).

    Use :meth:`open`, then :meth:`affected` to learn which base tensors change and
    :meth:`apply` on each tensor as it is loaded. Indexing and binding come from
    :class:`~meldkit.io.lora_index.AdapterIndex`, which the planner uses without torch.
    """

    def __init__(
        self,
        folder: Path,
        config: dict[str, Any],
        keys: list[str],
        getter: Callable[[str], torch.Tensor],
    ) -> None:
        super().__init__(folder, config, keys)
        self._get = getter  # key -> tensor, reads lazily from the adapter file

    @classmethod
    def open(cls, folder: str | Path) -> LoraAdapter:
        """Read ``adapter_config.json`` and index ``adapter_model.safetensors`` (lazily) or
        ``adapter_model.bin`` (``torch.load(weights_only=True)``, no pickled code runs)."""
        folder = Path(folder)
        config = read_adapter_config(folder)
        st_path, bin_path = folder / "adapter_model.safetensors", folder / "adapter_model.bin"
        if st_path.is_file():
            from safetensors import safe_open

            try:
                handle = safe_open(str(st_path), framework="pt")
            except Exception as exc:  # safetensors raises its own error types
                raise InputError(
                    f"cannot read {st_path}: {exc}", hint="the file is corrupt"
                ) from None
            # safetensors' stub leaves keys() unannotated; it returns the tensor names.
            keys: list[str] = list(handle.keys())  # type: ignore[no-untyped-call]
            return cls(folder, config, keys, handle.get_tensor)
        if bin_path.is_file():
            try:
                state = torch.load(str(bin_path), map_location="cpu", weights_only=True)
            except Exception as exc:  # torch raises many types for a bad archive
                raise InputError(
                    f"cannot read {bin_path}: {exc}", hint="the file is corrupt"
                ) from None
            if not isinstance(state, dict):
                raise InputError(f"{bin_path}: expected a dict of tensors")
            return cls(folder, config, list(state), state.__getitem__)
        raise InputError(
            f"{folder}: no adapter_model.safetensors or adapter_model.bin",
            hint="the adapter download is incomplete",
        )

    # -- application -------------------------------------------------------------------------
    def delta(
        self, weight_name: str, device: torch.device | str | None = None
    ) -> torch.Tensor | None:
        """``scale * B @ A`` for ``weight_name`` in float32, shaped like the base weight, on
        ``device`` (default: CPU, where the adapter is read)."""
        module = self.modules.get(self._target(weight_name))
        if module is None:
            return None
        a = self._get(module.a_key).to(device=device, dtype=torch.float32)
        b = self._get(module.b_key).to(device=device, dtype=torch.float32)
        if a.dim() != 2 or b.dim() != 2:
            raise InputError(
                f"{self.folder}: LoRA for '{weight_name}' is not a linear or embedding layer "
                f"(A {tuple(a.shape)}, B {tuple(b.shape)})",
                hint="convolution LoRA is not supported; merge it with PEFT first",
            )
        product = b @ a  # (out, in) for linear; (hidden, vocab) for embeddings
        if module.kind == "embedding" or self.config.get("fan_in_fan_out"):
            product = product.T  # embeddings and Conv1D store (in, out)
        return product * module.scale

    def apply(self, weight_name: str, tensor: torch.Tensor) -> torch.Tensor:
        """The adapted tensor (other tensors are returned unchanged).

        A full tensor saved in the adapter (``modules_to_save``, a trained bias, or the
        embedding PEFT saves beside an embedding LoRA) first replaces the base's; then
        ``W + scale * B @ A`` or ``bias + scale * lora_B.bias`` is added in float32 and the
        result cast back to the input dtype.
        """
        target = self._target(weight_name)
        base = tensor
        if target in self.replacements:
            base = self._get(self.replacements[target]).to(tensor.device)
            if base.shape != tensor.shape:
                raise InputError(
                    f"{self.folder}: saved tensor for '{weight_name}' has shape "
                    f"{tuple(base.shape)}, the base model's {tuple(tensor.shape)}",
                    hint="the adapter was trained for a different base model (or a resized vocabulary)",
                )
        if target in self.bias_deltas:
            key, scale = self.bias_deltas[target]
            bias = self._get(key).to(device=tensor.device, dtype=torch.float32)
            return (base.to(torch.float32) + bias * scale).to(tensor.dtype)
        delta = self.delta(weight_name, tensor.device)
        if delta is None:
            return base if base is tensor else base.to(tensor.dtype)
        if delta.shape != tensor.shape:
            raise InputError(
                f"{self.folder}: LoRA delta for '{weight_name}' has shape {tuple(delta.shape)}, "
                f"the base weight {tuple(tensor.shape)}",
                hint="the adapter was trained for a different base model (or fan_in_fan_out is wrong)",
            )
        return (base.to(torch.float32) + delta).to(tensor.dtype)
