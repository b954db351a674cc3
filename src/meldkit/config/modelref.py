"""Model references: ``path[@revision][+lora_path[@revision]]`` or the dict form.

``path`` is a local folder or a Hugging Face hub id. A string naming an existing local folder is
taken literally, so folders whose names contain ``@`` or ``+`` still work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from meldkit.errors import RecipeError

__all__ = ["ModelPath", "ModelRef", "parse_model_ref"]


@dataclass(frozen=True)
class ModelPath:
    """A folder or hub id, optionally pinned to a revision."""

    path: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"{self.path}@{self.revision}" if self.revision else self.path


@dataclass(frozen=True)
class ModelRef:
    """A model input: weights, an optional LoRA adapter applied on the fly, and an optional
    architecture override (``override_architecture``)."""

    model: ModelPath
    lora: ModelPath | None = None
    override_architecture: str | None = None

    def __str__(self) -> str:
        return f"{self.model}+{self.lora}" if self.lora else str(self.model)


def _parse_path(text: str, original: str, where: str) -> ModelPath:
    if text.count("@") > 1:
        raise RecipeError(
            f"{where}: cannot parse model reference '{original}' (more than one '@')",
            hint="write it as path@revision, e.g. org/model@main",
        )
    path, _, revision = text.partition("@")
    if not path or (("@" in text) and not revision):
        raise RecipeError(
            f"{where}: cannot parse model reference '{original}'",
            hint="write it as path, path@revision or path+lora_path",
        )
    return ModelPath(path, revision or None)


def _parse_string(text: str, where: str) -> ModelRef:
    text = text.strip()
    if not text:
        raise RecipeError(f"{where}: empty model reference", hint="give a model folder or hub id")
    if os.path.isdir(os.path.expanduser(text)):
        return ModelRef(ModelPath(os.path.expanduser(text)))
    parts = text.split("+")
    if len(parts) > 2:
        raise RecipeError(
            f"{where}: cannot parse model reference '{text}' (more than one '+')",
            hint="at most one LoRA can be applied: model+lora",
        )
    # `base + lora` (spaces around the '+') names the same two folders as `base+lora`.
    model = _parse_path(parts[0].strip(), text, where)
    lora = _parse_path(parts[1].strip(), text, where) if len(parts) == 2 else None
    return ModelRef(model, lora)


def _parse_path_dict(value: Any, where: str) -> ModelPath:
    if isinstance(value, str):
        return _parse_path(value, value, where)
    if isinstance(value, dict) and isinstance(value.get("path"), str):
        rev = value.get("revision")
        return ModelPath(value["path"], str(rev) if rev is not None else None)
    raise RecipeError(f"{where}: expected a path string or {{path, revision}}, got {value!r}")


def parse_model_ref(value: Any, where: str = "model") -> ModelRef:
    """Parse a model reference written as a string or as MergeKit's dict form."""
    if isinstance(value, ModelRef):
        return value
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        return _parse_string(value, where)
    if isinstance(value, dict) and "model" in value:
        inner = value["model"]
        if isinstance(inner, str):
            base = _parse_string(inner, where)
            model, lora = base.model, base.lora
        else:
            model, lora = _parse_path_dict(inner, f"{where}.model"), None
        if value.get("lora") is not None:
            lora = _parse_path_dict(value["lora"], f"{where}.lora")
        arch = value.get("override_architecture")
        return ModelRef(model, lora, str(arch) if arch is not None else None)
    if isinstance(value, dict) and "path" in value:
        return ModelRef(_parse_path_dict(value, where))
    raise RecipeError(
        f"{where}: expected a model reference (a folder, hub id or {{model: ...}}), got {value!r}",
        hint="e.g. `model: ./my-model` or `model: org/name@main`",
    )
