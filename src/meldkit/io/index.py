"""A header-only index of one checkpoint folder: every tensor's file, offset, dtype and shape.

Supported layouts, in order of preference:

* ``model.safetensors.index.json`` (weight_map -> shards) or any ``*.safetensors.index.json``;
* ``*.safetensors`` files (one or several, e.g. ``model.safetensors`` or
  ``consolidated.safetensors``);
* ``pytorch_model.bin.index.json`` / ``pytorch_model*.bin``: listed with
  ``torch.load(weights_only=True, mmap=True)``, which never runs pickled code.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meldkit.errors import InputError
from meldkit.io.header import TensorInfo, read_header

__all__ = ["CheckpointIndex", "PickleTensorInfo", "open_index"]


@dataclass(frozen=True)
class PickleTensorInfo(TensorInfo):
    """A tensor inside a pickled ``.bin`` file (read through torch.load, not by offset)."""


@dataclass
class CheckpointIndex:
    """All tensors of one model folder, from headers only. ``config`` is config.json or None."""

    path: Path
    tensors: dict[str, TensorInfo]
    files: list[Path]
    config: dict[str, Any] | None = None
    format: str = "safetensors"
    extra: dict[str, Any] = field(default_factory=dict)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc}", hint="the file is corrupt; replace it") from None


def _shards_from_index(index_path: Path) -> list[Path]:
    data = _load_json(index_path)
    wmap = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(wmap, dict) or not all(isinstance(v, str) for v in wmap.values()):
        raise InputError(
            f"{index_path}: no valid 'weight_map' in the index file",
            hint="the index must map tensor names to shard file names",
        )
    shards: list[Path] = []
    for name in dict.fromkeys(wmap.values()):
        shard = index_path.parent / name
        if os.path.sep in name or "/" in name or name.startswith(".."):
            shard = (index_path.parent / name).resolve()
            if index_path.parent.resolve() not in shard.parents:
                raise InputError(f"{index_path}: shard '{name}' points outside the model folder")
        if not shard.is_file():
            raise InputError(
                f"{index_path} lists shard '{name}', which does not exist",
                hint="the download is incomplete; fetch the missing shard",
            )
        shards.append(shard)
    return shards


def _index_safetensors(files: list[Path]) -> dict[str, TensorInfo]:
    tensors: dict[str, TensorInfo] = {}
    for f in files:
        for name, info in read_header(f).items():
            if name in tensors:
                raise InputError(
                    f"tensor '{name}' appears in both {tensors[name].file.name} and {f.name}",
                    hint="remove the stray shard from the folder",
                )
            tensors[name] = info
    return tensors


_TORCH_DTYPE_CODES = {
    "float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
}  # fmt: skip


def _index_pickle(files: list[Path]) -> dict[str, TensorInfo]:
    import pickle

    import torch

    tensors: dict[str, TensorInfo] = {}
    for f in files:
        try:
            state = torch.load(f, map_location="meta", weights_only=True, mmap=False)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(
                f"{f}: refused to load pickled weights ({first[:200]})",
                hint="meldkit reads .bin files only with torch.load(weights_only=True); "
                "convert the model to safetensors if you trust it",
            ) from None
        if not isinstance(state, dict):
            raise InputError(f"{f}: expected a dict of tensors, found {type(state).__name__}")
        for name, t in state.items():
            if not isinstance(t, torch.Tensor):
                continue
            code = _TORCH_DTYPE_CODES.get(str(t.dtype).removeprefix("torch."), "F32")
            tensors[name] = PickleTensorInfo(name, code, tuple(t.shape), f, 0, t.numel() * t.element_size())
    return tensors


def open_index(folder: str | os.PathLike[str]) -> CheckpointIndex:
    """Index the checkpoint in ``folder`` from its headers (no tensor bytes are read)."""
    path = Path(folder)
    if not path.is_dir():
        raise InputError(
            f"model folder '{folder}' does not exist" if not path.exists() else f"'{folder}' is not a folder",
            hint="give a local model folder (or a hub id when huggingface_hub is installed)",
        )
    config = _load_json(path / "config.json") if (path / "config.json").is_file() else None
    st_indexes = sorted(path.glob("*.safetensors.index.json"))
    st_files = sorted(path.glob("*.safetensors"))
    if st_indexes:
        files = _shards_from_index(st_indexes[0])
        return CheckpointIndex(path, _index_safetensors(files), files, config)
    if st_files:
        # adapter_model.safetensors belongs to a LoRA, not to the model itself.
        files = [f for f in st_files if not f.name.startswith("adapter_model")] or st_files
        return CheckpointIndex(path, _index_safetensors(files), files, config)
    bin_index = path / "pytorch_model.bin.index.json"
    bin_files = _shards_from_index(bin_index) if bin_index.is_file() else sorted(path.glob("pytorch_model*.bin"))
    if bin_files:
        return CheckpointIndex(path, _index_pickle(bin_files), bin_files, config, format="pickle")
    raise InputError(
        f"no weights found in '{folder}' (looked for *.safetensors and pytorch_model*.bin)",
        hint="point the recipe at a folder holding the model's weight files",
    )
