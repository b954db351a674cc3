"""Input models for planning: resolve each reference to a folder and index its headers."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meldkit.config.modelref import ModelPath, ModelRef
from meldkit.errors import InputError
from meldkit.io.index import CheckpointIndex, open_index
from meldkit.plan.architecture import ModelLayout, infer_layout

__all__ = ["InputModelInfo", "open_models"]


@dataclass
class InputModelInfo:
    """A resolved input: its reference, folder, tensor index, layout and optional LoRA folder."""

    key: str
    ref: ModelRef
    folder: Path
    index: CheckpointIndex
    layout: ModelLayout
    lora_folder: Path | None = None

    @property
    def config(self) -> dict[str, Any] | None:
        return self.index.config


def _resolve_folder(path: ModelPath, cache_dir: str | None) -> Path:
    local = Path(os.path.expanduser(path.path))
    if local.is_dir():
        return local
    looks_local = path.path.startswith((".", "/", "~")) or os.sep in path.path.strip("/").replace(
        "/", "", 1
    )
    if looks_local or path.path.count("/") != 1:
        raise InputError(
            f"model folder '{path.path}' does not exist",
            hint="check the path in the recipe (paths are relative to the current directory)",
        )
    try:
        from meldkit.io.hub import resolve_model_folder
    except ImportError:  # pragma: no cover - hub support not installed in this build
        raise InputError(
            f"model folder '{path.path}' does not exist",
            hint="give a local folder; hub ids need huggingface_hub",
        ) from None
    return resolve_model_folder(path.path, path.revision, cache_dir=cache_dir)


def open_models(
    refs: list[ModelRef], *, cache_dir: str | None = None, errors: list[InputError] | None = None
) -> tuple[dict[str, InputModelInfo], list[str]]:
    """Open every referenced model; returns the models by key and the problems found.

    All models are tried so that every missing or broken input is reported at once. With
    ``errors``, the errors themselves (message and hint apart) are appended there too.
    """
    models: dict[str, InputModelInfo] = {}
    problems: list[str] = []
    for ref in refs:
        key = str(ref)
        if key in models:
            continue
        try:
            folder = _resolve_folder(ref.model, cache_dir)
            index = open_index(folder)
            lora_folder = _resolve_folder(ref.lora, cache_dir) if ref.lora else None
            if lora_folder is not None and not (lora_folder / "adapter_config.json").is_file():
                raise InputError(f"LoRA folder '{ref.lora}' has no adapter_config.json")
        except InputError as exc:
            problems.append(exc.message + (f" ({exc.hint})" if exc.hint else ""))
            if errors is not None:
                errors.append(exc)
            continue
        layout = infer_layout(index.tensors, index.config)
        models[key] = InputModelInfo(key, ref, folder, index, layout, lora_folder)
    return models, problems
