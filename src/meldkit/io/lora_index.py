"""What a PEFT LoRA adapter changes, from its ``adapter_config.json`` and tensor names alone.

No torch here: the planner indexes an adapter (and :mod:`meldkit.io.lora_check` checks its
shapes) from the safetensors header, and :class:`meldkit.io.lora.LoraAdapter` builds on the
same index to apply it while merging.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from meldkit.errors import InputError

__all__ = ["AdapterIndex", "LoraModule", "pattern_value", "read_adapter_config"]

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
_PEFT_HINT = "a '+lora' reference must name a folder saved by PEFT's save_pretrained"


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


def read_adapter_config(folder: Path) -> dict[str, Any]:
    """``folder/adapter_config.json``, checked: a LoRA PEFT can merge, positive ``r`` and
    ``lora_alpha``, and ``rank_pattern`` / ``alpha_pattern`` of valid regexes to positive
    numbers. Any problem is an :class:`InputError` naming the file."""
    path = folder / "adapter_config.json"
    if not path.is_file():
        raise InputError(f"{folder} is not a PEFT adapter (no adapter_config.json)", _PEFT_HINT)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(
            f"cannot read {path}: {exc}", hint="the file is corrupt; save the adapter again"
        ) from None
    if not isinstance(config, dict):
        raise InputError(f"{path}: expected a JSON object", hint=_PEFT_HINT)
    _check_supported(config, path)
    _check_numbers(config, path)
    return config


def _check_supported(config: dict[str, Any], path: Path) -> None:
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


def _positive(value: Any, integer: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if not math.isfinite(value) or value <= 0:
        return False
    return not integer or float(value).is_integer()


def _check_numbers(config: dict[str, Any], path: Path) -> None:
    hint = "fix adapter_config.json (PEFT writes r and lora_alpha as positive numbers)"
    for key, integer in (("r", True), ("lora_alpha", False)):
        value = config.get(key)
        if value is not None and not _positive(value, integer):
            want = "a positive integer" if integer else "a positive number"
            raise InputError(f"{path}: '{key}' must be {want}, got {value!r}", hint=hint)
    for key, integer in (("rank_pattern", True), ("alpha_pattern", False)):
        patterns = config.get(key)
        if patterns is None:
            continue
        if not isinstance(patterns, dict):
            raise InputError(
                f"{path}: '{key}' must map module patterns to numbers, got {patterns!r}", hint
            )
        for pattern, value in patterns.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise InputError(
                    f"{path}: {key} key '{pattern}' is not a valid regular expression ({exc})",
                    hint,
                ) from None
            if not _positive(value, integer):
                want = "a positive integer" if integer else "a positive number"
                raise InputError(f"{path}: {key}['{pattern}'] must be {want}, got {value!r}", hint)


class AdapterIndex:
    """An adapter's modules, bias deltas and replaced tensors, from its config and key names.

    :meth:`bind` matches them to a checkpoint's tensor names (which may lack a prefix PEFT
    writes); :meth:`bound_name` then gives the checkpoint name a target was matched to.
    """

    def __init__(self, folder: Path, config: dict[str, Any], keys: Iterable[str]) -> None:
        self.folder = folder
        self.config = config
        self.modules: dict[str, LoraModule] = {}
        self.bias_deltas: dict[str, tuple[str, float]] = {}  # bias name -> (key, scale)
        self.replacements: dict[str, str] = {}  # base tensor name -> adapter key
        self._aliases: dict[str, str] = {}  # checkpoint name -> adapter target name
        self._bound: dict[str, str] = {}  # adapter target name -> checkpoint name
        self._index(list(keys))

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
                        raise InputError(
                            f"{self.folder}: unexpected LoRA tensor '{key}'", _PEFT_HINT
                        )
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
                raise InputError(
                    f"{self.folder}: '{key}' has no matching lora_{other} tensor",
                    hint="the adapter file is incomplete; save the adapter again",
                )
            rank, alpha, scale = self._scale(module)
            kind: Literal["linear", "embedding"] = "linear" if part == "A" else "embedding"
            self.modules[f"{module}.weight"] = LoraModule(
                f"{module}.weight", key, b_key, kind, rank, alpha, scale
            )

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
                self._bound[target] = target
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
                self._bound[target] = found
        return missing

    def bound_name(self, target: str) -> str | None:
        """The checkpoint name :meth:`bind` matched ``target`` to (None: unmatched)."""
        return self._bound.get(target)

    def _target(self, name: str) -> str:
        return self._aliases.get(name, name)

    def affected(self, weight_names: Iterable[str]) -> set[str]:
        """The names among ``weight_names`` that the adapter changes."""
        names = list(weight_names)
        self.bind(names)
        targets = self.targets
        return {n for n in names if self._target(n) in targets}

    def unused_patterns(self) -> list[str]:
        """``rank_pattern`` / ``alpha_pattern`` keys that match no module of the adapter: they
        change nothing, which usually means a typo in the pattern."""
        modules = [t.rsplit(".", 1)[0] for t in [*self.modules, *self.bias_deltas]]
        unused = []
        for field in ("rank_pattern", "alpha_pattern"):
            for key in self.config.get(field) or {}:
                if not any(pattern_value({key: 1}, m, None) for m in modules):
                    unused.append(f"{field} '{key}'")
        return unused
