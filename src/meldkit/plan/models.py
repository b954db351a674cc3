"""Input models for planning: resolve each reference to a folder and index its headers."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from meldkit.config.modelref import ModelPath, ModelRef
from meldkit.errors import InputError
from meldkit.io.hub import resolve_model_folder
from meldkit.io.index import CheckpointIndex, open_index
from meldkit.io.lora_check import check_adapter
from meldkit.plan.architecture import ModelLayout, infer_layout

__all__ = ["InputModelInfo", "open_models", "input_warnings", "recipe_folder"]


@dataclass
class InputModelInfo:
    """A resolved input: its reference, folder, tensor index, layout and optional LoRA folder
    (with the warnings its plan-time check found: targets matching no tensor, unused
    patterns)."""

    key: str
    ref: ModelRef
    folder: Path
    index: CheckpointIndex
    layout: ModelLayout
    lora_folder: Path | None = None
    lora_warnings: list[str] = field(default_factory=list)

    @property
    def config(self) -> dict[str, Any] | None:
        return self.index.config


def _resolve_folder(
    path: ModelPath, cache_dir: str | None, kind: Literal["model", "lora"], recipe_dir: Path | None
) -> Path:
    return resolve_model_folder(
        path.path, path.revision, cache_dir=cache_dir, kind=kind, recipe_dir=recipe_dir
    )


def _open_one(ref: ModelRef, cache_dir: str | None, recipe_dir: Path | None) -> InputModelInfo:
    """Resolve and index one input; its LoRA adapter is checked against it from headers, so
    a mismatched adapter fails here, before anything is computed."""
    folder = _resolve_folder(ref.model, cache_dir, "model", recipe_dir)
    index = open_index(folder)
    lora_folder: Path | None = None
    lora_warnings: list[str] = []
    if ref.lora is not None:
        lora_folder = _resolve_folder(ref.lora, cache_dir, "lora", recipe_dir)
        lora_warnings = check_adapter(lora_folder, folder, index.tensors)
    layout = infer_layout(index.tensors, index.config)
    return InputModelInfo(str(ref), ref, folder, index, layout, lora_folder, lora_warnings)


def recipe_folder(recipe: Any) -> Path | None:
    """The folder of ``recipe`` when it names a recipe file (None for YAML text, a dict or a
    MergeConfig), for :func:`open_models`' ``recipe_dir``."""
    if not isinstance(recipe, (str, os.PathLike)):
        return None
    text = os.fspath(recipe)
    if not isinstance(text, str) or not text.strip() or "\n" in text:
        return None
    try:
        path = Path(text)
        return path.resolve().parent if path.is_file() else None
    except (OSError, ValueError):  # a name too long for the OS, or with a NUL byte
        return None


def open_models(
    refs: list[ModelRef],
    *,
    cache_dir: str | None = None,
    errors: list[InputError] | None = None,
    recipe_dir: Path | None = None,
) -> tuple[dict[str, InputModelInfo], list[str]]:
    """Open every referenced model; returns the models by key and the problems found.

    All models are tried so that every missing or broken input is reported at once. With
    ``errors``, the errors themselves (message and hint apart) are appended there too.
    ``recipe_dir`` (the recipe file's folder) lets a missing relative path say whether it
    exists beside the recipe.
    """
    models: dict[str, InputModelInfo] = {}
    problems: list[str] = []
    tried: set[str] = set()
    for ref in refs:
        key = str(ref)
        if key in tried:  # a model named twice (base_model and models:) is reported once
            continue
        tried.add(key)
        try:
            models[key] = _open_one(ref, cache_dir, recipe_dir)
        except InputError as exc:
            problems.append(exc.message + (f" ({exc.hint})" if exc.hint else ""))
            if errors is not None:
                errors.append(exc)
    return models, problems


def input_warnings(models: dict[str, InputModelInfo]) -> list[tuple[tuple[str, ...], str]]:
    """The inputs' own warnings (LoRA targets that match no tensor, patterns that match no
    module) as ``(key, message)`` for the plan's problem log."""
    found: list[tuple[tuple[str, ...], str]] = []
    for info in models.values():
        for i, message in enumerate(info.lora_warnings):
            # The first (unmatched targets) shares its key with plan.vocabulary's
            # check_lora_targets, so that the log keeps one of the two.
            found.append(
                (("lora-unmatched", info.key) if i == 0 else ("lora", info.key, str(i)), message)
            )
    return found
