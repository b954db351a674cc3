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
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from meldkit.errors import InputError

__all__ = ["LoraAdapter", "LoraModule", "pattern_value"]

_PREFIX = "base_model.model."
# <module>.lora_A.weight, <module>.lora_A.<adapter>.weight, <module>.lora_B.bias
_LINEAR_KEY = re.compile(
    r"^(?P<module>.+)\.(?P<part>lora_A|lora_B)(?:\.[^.]+)?\.(?P<param>weight|bias)$"
)
# <module>.lora_embedding_A (PEFT saves these parameters without a .weight suffix)
_EMBED_KEY = re.compile(
    r"^(?P<module>.+)\.(?P<part>lora_embedding_A|lora_embedding_B)(?:\.[^.]+)?$"
)
# <module>.modules_to_save.<adapter>.<param> (older PEFT files keep the wrapper in the name)
_SAVED_KEY = re.compile(r"^(?P<module>.+)\.modules_to_save\.[^.]+\.(?P<param>.+)$")
_UNSUPPORTED_PARTS = ("lora_magnitude_vector", "trainable_tokens", "lora_E", "lora_ranknum")


def pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's rank/alpha pattern lookup: the first key (a regex) matching the whole module
    name or a dotted suffix of it wins; no match gives ``default``."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return patterns[key]
    return default


@dataclass(frozen=True)
class LoraModule:
    """One adapted weight: the adapter keys of its A and B matrices and its scale."""

    target: str  # the base weight, e.g. model.layers.0.self_attn.q_proj.weight
    a_key: str
    b_key: str
    kind: Literal["linear", "embedding"]
    rank: int
    alpha: float
    scale: float


class LoraAdapter:
    """An opened PEFT LoRA adapter folder (``adapter_config.json`` + weights).

    Use :meth:`open`, then :meth:`affected` to learn which base tensors change and
    :meth:`apply` on each tensor as it is loaded.
    """

    def __init__(
        self,
        folder: Path,
        config: dict[str, Any],
        keys: list[str],
        getter: Callable[[str], torch.Tensor],
    ) -> None:
        self.folder = folder
        self.config = config
        self._get = getter  # key -> tensor, reads lazily from the adapter file
        self.modules: dict[str, LoraModule] = {}
        self.bias_deltas: dict[str, tuple[str, float]] = {}  # bias name -> (key, scale)
        self.replacements: dict[str, str] = {}  # base tensor name -> adapter key
        self._aliases: dict[str, str] = {}  # checkpoint name -> adapter target name
        self._index(keys)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def open(cls, folder: str | Path) -> LoraAdapter:
        """Read ``adapter_config.json`` and index ``adapter_model.safetensors`` (lazily) or
        ``adapter_model.bin`` (``torch.load(weights_only=True)``, no pickled code runs)."""
        folder = Path(folder)
        config_path = folder / "adapter_config.json"
        if not config_path.is_file():
            raise InputError(
                f"{folder} is not a PEFT adapter (no adapter_config.json)",
                hint="a '+lora' reference must name a folder saved by PEFT's save_pretrained",
            )
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"cannot read {config_path}: {exc}") from None
        if not isinstance(config, dict):
            raise InputError(f"{config_path}: expected a JSON object")
        _check_config(config, config_path)
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

    def _scale(self, module: str) -> tuple[int, float, float]:
        cfg = self.config
        rank = int(pattern_value(cfg.get("rank_pattern") or {}, module, cfg.get("r", 8)))
        alpha = float(
            pattern_value(cfg.get("alpha_pattern") or {}, module, cfg.get("lora_alpha", 8))
        )
        scale = alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank
        return rank, alpha, scale

    def _index(self, keys: list[str]) -> None:
        parts: dict[tuple[str, str], str] = {}
        for key in keys:
            name = key[len(_PREFIX) :] if key.startswith(_PREFIX) else key
            if any(f".{p}" in name for p in _UNSUPPORTED_PARTS):
                raise InputError(
                    f"{self.folder}: adapter tensor '{key}' belongs to an unsupported PEFT feature",
                    hint="merge this adapter with PEFT's merge_and_unload and use the result",
                )
            if m := _LINEAR_KEY.match(name):
                if m["param"] == "bias":
                    if m["part"] != "lora_B":
                        raise InputError(f"{self.folder}: unexpected LoRA tensor '{key}'")
                    self.bias_deltas[m["module"] + ".bias"] = (key, self._scale(m["module"])[2])
                else:
                    parts[(m["module"], m["part"][-1])] = key
            elif m := _EMBED_KEY.match(name):
                parts[(m["module"], "embedding_" + m["part"][-1])] = key
            elif m := _SAVED_KEY.match(name):
                self.replacements[f"{m['module']}.{m['param']}"] = key
            else:
                # modules_to_save (saved under the plain name), `bias: all|lora_only` biases and
                # embeddings saved beside an embedding LoRA: full tensors replacing the base's.
                # PEFT names the wrapped original `<module>.base_layer.<param>`.
                self.replacements[name.replace(".base_layer.", ".")] = key
        for (module, part), key in parts.items():
            if part not in ("A", "embedding_A"):
                continue
            other = "B" if part == "A" else "embedding_B"
            b_key = parts.get((module, other))
            if b_key is None:
                raise InputError(f"{self.folder}: '{key}' has no matching lora_{other} tensor")
            rank, alpha, scale = self._scale(module)
            kind: Literal["linear", "embedding"] = "linear" if part == "A" else "embedding"
            self.modules[f"{module}.weight"] = LoraModule(
                f"{module}.weight", key, b_key, kind, rank, alpha, scale
            )

    # -- queries -----------------------------------------------------------------------------
    @property
    def targets(self) -> set[str]:
        """Every base tensor name the adapter changes or replaces, as PEFT names it."""
        return set(self.modules) | set(self.bias_deltas) | set(self.replacements)

    def bind(self, weight_names: Iterable[str]) -> list[str]:
        """Match the adapter's targets to a checkpoint's tensor names; returns the targets that
        match none. A target matches its exact name, else the unique checkpoint name equal to
        it without its first component(s) (GPT-2 hub checkpoints lack ``transformer.``), else
        the unique name ending with ``.<target>``."""
        names = set(weight_names)
        missing: list[str] = []
        for target in sorted(self.targets):
            if target in names:
                continue
            pieces = target.split(".")
            shorter = [".".join(pieces[i:]) for i in range(1, len(pieces) - 1)]
            found = next((s for s in shorter if s in names), None)
            if found is None:
                longer = [n for n in names if n.endswith("." + target)]
                found = longer[0] if len(longer) == 1 else None
            if found is None:
                missing.append(target)
            else:
                self._aliases[found] = target
        return missing

    def _target(self, name: str) -> str:
        return self._aliases.get(name, name)

    def affected(self, weight_names: Iterable[str]) -> set[str]:
        """The names among ``weight_names`` that :meth:`apply` changes."""
        names = list(weight_names)
        self.bind(names)
        targets = self.targets
        return {n for n in names if self._target(n) in targets}

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


def _check_config(config: dict[str, Any], path: Path) -> None:
    peft_type = str(config.get("peft_type", "LORA")).upper()
    problems = []
    if peft_type != "LORA":
        problems.append(f"PEFT type {peft_type} (only LORA adapters can be applied)")
    if config.get("use_dora"):
        problems.append("DoRA (use_dora: true)")
    if config.get("target_parameters"):
        problems.append("LoRA on parameters (target_parameters)")
    if config.get("trainable_token_indices"):
        problems.append("trainable tokens (trainable_token_indices)")
    if config.get("layer_replication"):
        problems.append("layer_replication")
    if problems:
        raise InputError(
            f"{path}: unsupported adapter: " + "; ".join(problems),
            hint="merge it with PEFT's merge_and_unload, save the result, and use that folder",
        )
    for key in ("r", "lora_alpha"):
        value = config.get(key)
        if value is not None and (not isinstance(value, (int, float)) or value <= 0):
            raise InputError(f"{path}: '{key}' must be a positive number, got {value!r}")
