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

from meldkit.errors import InputError, MergeRuntimeError
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
        raise InputError(
            f"cannot read {path}: {exc}", hint="the file is corrupt; replace it"
        ) from None


def _shards_from_index(index_path: Path) -> tuple[list[Path], dict[str, str]]:
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
        # Judge the name itself, not where symlinks lead: Hugging Face caches link every
        # file into a blobs/ folder outside the snapshot.
        if os.path.isabs(name) or os.path.normpath(name).startswith(".."):
            raise InputError(f"{index_path}: shard '{name}' points outside the model folder")
        if not shard.is_file():
            raise InputError(
                f"{index_path} lists shard '{name}', which does not exist",
                hint="the download is incomplete; fetch the missing shard",
            )
        shards.append(shard)
    return shards, wmap


def _check_weight_map(
    index_path: Path, wmap: dict[str, str], tensors: dict[str, TensorInfo]
) -> None:
    """Every tensor the index promises must be in the shard it names."""
    missing = [
        n for n, f in wmap.items() if n not in tensors or tensors[n].file.name != Path(f).name
    ]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise InputError(
            f"{index_path} lists tensors that its shards do not hold: {', '.join(missing[:3])}{more}",
            hint="a shard is corrupt or from another download; fetch the model again",
        )


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


def pickle_refusal(path: Path, exc: BaseException) -> InputError:
    """The error for a ``.bin`` file that ``torch.load(weights_only=True)`` refused.

    torch's message opens with a paragraph about its defaults; the line that says what the file
    tried (``unsupported GLOBAL posix.system``, ``Unsupported operand``) is the useful one.
    """
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    reason = next((ln for ln in lines if "nsupported" in ln), None)
    if reason is None:
        boiler = ("Weights only load failed", "Please file an issue", "Check the documentation")
        reason = next((ln for ln in lines if not ln.startswith(boiler)), type(exc).__name__)
    return InputError(
        f"{path}: refused to load pickled weights: not a plain tensor file ({reason[:200]})",
        hint="meldkit reads .bin files only with torch.load(weights_only=True), which never runs "
        "code from the file; convert the model to safetensors if you trust it",
    )


def _index_pickle(files: list[Path]) -> dict[str, TensorInfo]:
    import torch

    from meldkit.io.dtypes import code_of

    tensors: dict[str, TensorInfo] = {}
    for f in files:
        try:
            state = torch.load(f, map_location="meta", weights_only=True, mmap=False)
        # Any exception: a corrupt or hostile pickle makes torch.load raise almost anything
        # (UnpicklingError, RuntimeError, KeyError, UnicodeDecodeError, ...).
        except Exception as exc:
            raise pickle_refusal(f, exc) from None
        # Training checkpoints often nest the weights one level down.
        for key in ("state_dict", "model", "module"):
            if (
                isinstance(state, dict)
                and isinstance(state.get(key), dict)
                and not any(isinstance(v, torch.Tensor) for v in state.values())
            ):
                state = state[key]
        if not isinstance(state, dict) or not any(
            isinstance(v, torch.Tensor) for v in state.values()
        ):
            raise InputError(
                f"{f}: holds no tensors (expected a dict of tensor names to tensors)",
                hint="save the model's state_dict, or convert it to safetensors",
            )
        for name, t in state.items():
            if not isinstance(t, torch.Tensor):
                continue
            try:
                code = code_of(t.dtype)
            except MergeRuntimeError:
                raise InputError(
                    f"{f}: tensor '{name}' has dtype {t.dtype}, which meldkit cannot merge"
                ) from None
            tensors[name] = PickleTensorInfo(
                name, code, tuple(t.shape), f, 0, t.numel() * t.element_size()
            )
    return tensors


def open_index(folder: str | os.PathLike[str]) -> CheckpointIndex:
    """Index the checkpoint in ``folder`` from its headers (no tensor bytes are read)."""
    path = Path(folder)
    if not path.is_dir():
        raise InputError(
            f"model folder '{folder}' does not exist"
            if not path.exists()
            else f"'{folder}' is not a folder",
            hint="give a local model folder (or a hub id when huggingface_hub is installed)",
        )
    config = _load_json(path / "config.json") if (path / "config.json").is_file() else None
    if config is not None and not isinstance(config, dict):
        # Everything downstream reads keys from it; a list or a number is a broken download.
        raise InputError(
            f"{path / 'config.json'} is not a JSON object", hint="the file is corrupt; replace it"
        )
    st_indexes = sorted(path.glob("*.safetensors.index.json"))
    st_files = sorted(path.glob("*.safetensors"))
    if st_indexes:
        # Prefer the standard name when a folder ships several layouts (e.g. Mistral repos).
        preferred = path / "model.safetensors.index.json"
        index_path = preferred if preferred in st_indexes else st_indexes[0]
        files, wmap = _shards_from_index(index_path)
        tensors = _index_safetensors(files)
        _check_weight_map(index_path, wmap, tensors)
        return CheckpointIndex(path, tensors, files, config)
    if st_files:
        # model.safetensors is the checkpoint when present (Mistral repos also ship a
        # consolidated.safetensors copy); adapter_model.safetensors belongs to a LoRA.
        if path / "model.safetensors" in st_files:
            files = [path / "model.safetensors"]
        else:
            files = [
                f for f in st_files if not f.name.startswith(("adapter_model", "consolidated"))
            ] or st_files
        return CheckpointIndex(path, _index_safetensors(files), files, config)
    bin_index = path / "pytorch_model.bin.index.json"
    if bin_index.is_file():
        bin_files, wmap = _shards_from_index(bin_index)
        tensors = _index_pickle(bin_files)
        _check_weight_map(bin_index, wmap, tensors)
        return CheckpointIndex(path, tensors, bin_files, config, format="pickle")
    bin_files = sorted(path.glob("pytorch_model*.bin"))
    if bin_files:
        return CheckpointIndex(path, _index_pickle(bin_files), bin_files, config, format="pickle")
    raise InputError(
        f"no weights found in '{folder}' (looked for *.safetensors and pytorch_model*.bin)",
        hint="point the recipe at a folder holding the model's weight files",
    )
