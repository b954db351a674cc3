"""Raw checkpoints as planner inputs: one ``.safetensors``, ``.pt`` or ``.bin`` file, or an
in-memory state dict, presented as an :class:`~meldkit.plan.models.InputModelInfo` whose
index lists the tensors of that one file (from headers: no tensor byte is read here).

A safetensors file is indexed from its header, by offset, like a shard of a model folder.
A pickle is opened with ``torch.load(weights_only=True, mmap=True)``: the mapped load names
every tensor, its dtype and shape without reading the bytes, and never runs code from the
file. Only a flat ``{name: tensor}`` dict is taken (what ``torch.save(model.state_dict())``
writes); other values beside the tensors (a step count) are reported and left out.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from meldkit.config.modelref import ModelRef
from meldkit.errors import InputError, MergeRuntimeError
from meldkit.io.header import TensorInfo, read_header
from meldkit.io.index import CheckpointIndex, PickleTensorInfo, pickle_refusal
from meldkit.plan.architecture import infer_layout
from meldkit.plan.models import InputModelInfo

__all__ = ["RAW_SUFFIXES", "MEMORY", "open_raw_file", "memory_input", "raw_input"]

RAW_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
# The "file" of an in-memory tensor: never opened (merge_state_dicts reads the dict itself).
MEMORY = Path("<memory>")


def raw_input(
    key: str, ref: ModelRef, where: Path, tensors: dict[str, TensorInfo]
) -> InputModelInfo:
    """An input model made of ``tensors`` (by name, in file order), with no config.json."""
    fmt = "pickle" if any(type(t) is PickleTensorInfo for t in tensors.values()) else "safetensors"
    index = CheckpointIndex(where, tensors, [where], None, format=fmt)
    layout = infer_layout(tensors, None)
    # The "folder" is the file itself: the engine keeps its output out of every input folder,
    # and an output beside the input file must stay possible.
    return InputModelInfo(key, ref, where, index, layout)


def open_raw_file(ref: ModelRef, warn: Callable[[str], None]) -> InputModelInfo:
    """Index the raw checkpoint file ``ref`` names; raises InputError for a missing, unknown
    or refused file."""
    literal = Path(os.path.expanduser(str(ref)))
    if literal.is_file():  # a file name with '+' or '@' in it is not a LoRA or a revision
        return _open_file(ref, literal, warn)
    if ref.lora is not None:
        raise InputError(
            f"{ref}: LoRA adapters (`+lora`) are not applied to raw checkpoints",
            hint="merge the adapter into the model first, or use `meldkit merge` on model folders",
        )
    if ref.model.revision is not None:
        raise InputError(f"{ref}: a raw checkpoint is a local file; it has no revision (`@...`)")
    return _open_file(ref, Path(os.path.expanduser(ref.model.path)), warn)


def _open_file(ref: ModelRef, path: Path, warn: Callable[[str], None]) -> InputModelInfo:
    if path.is_dir():
        raise InputError(
            f"'{path}' is a folder; merge-raw takes single {', '.join(RAW_SUFFIXES)} files",
            hint="use `meldkit merge` for Hugging Face model folders",
        )
    if not path.is_file():
        raise InputError(
            f"model file '{path}' does not exist", hint="fix the model paths in the recipe"
        )
    if path.suffix not in RAW_SUFFIXES:
        raise InputError(
            f"'{path}' is not a raw checkpoint (expected a {', '.join(RAW_SUFFIXES)} file)"
        )
    tensors = read_header(path) if path.suffix == ".safetensors" else _index_pickle(path, warn)
    if not tensors:
        raise InputError(f"{path}: holds no tensors")
    return raw_input(str(ref), ref, path, tensors)


def _load_mapped(path: Path) -> Any:
    import torch

    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            # A legacy (pre-zip) file cannot be mapped: load it onto the meta device.
            return torch.load(path, map_location="meta", weights_only=True)
    # Any exception: a corrupt or hostile pickle makes torch.load raise almost anything.
    except Exception as exc:
        raise pickle_refusal(path, exc) from None


def _index_pickle(path: Path, warn: Callable[[str], None]) -> dict[str, TensorInfo]:
    import torch

    from meldkit.io.dtypes import code_of

    state = _load_mapped(path)
    if not isinstance(state, Mapping):
        raise InputError(
            f"{path}: holds a {type(state).__name__}, not a dict of tensor names to tensors",
            hint="save the model's state_dict(), or convert it to safetensors",
        )
    tensors: dict[str, TensorInfo] = {}
    others: list[str] = []
    offset = 0
    for name, t in state.items():
        if not isinstance(t, torch.Tensor):
            others.append(str(name))
            continue
        try:
            code = code_of(t.dtype)
        except MergeRuntimeError:
            raise InputError(
                f"{path}: tensor '{name}' has dtype {t.dtype}, which meldkit cannot merge"
            ) from None
        nbytes = t.numel() * t.element_size()
        # A pickled tensor is read by name, never by offset; distinct ranges keep the plan's
        # byte counts (which count each (file, start) once) right.
        end = offset + nbytes
        tensors[str(name)] = PickleTensorInfo(str(name), code, tuple(t.shape), path, offset, end)
        offset = end
    if others and not tensors:
        raise InputError(
            f"{path}: holds no tensors at the top level (found {', '.join(others[:3])})",
            hint="save the state dict itself (torch.save(model.state_dict(), path))",
        )
    if others:
        warn(
            f"{path}: {_entries(len(others))} not merged "
            f"({', '.join(others[:3])}{', ...' if len(others) > 3 else ''})"
        )
    return tensors


def memory_input(key: str, ref: ModelRef, state: Mapping[str, Any]) -> InputModelInfo:
    """An in-memory state dict as an input model (its TensorInfos locate nothing)."""
    import torch

    from meldkit.io.dtypes import code_of

    tensors: dict[str, TensorInfo] = {}
    for name, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise InputError(
                f"state dict {key}: '{name}' is a {type(t).__name__}, not a tensor",
                hint="pass only tensors (model.state_dict() values)",
            )
        try:
            code = code_of(t.dtype)
        except MergeRuntimeError:
            raise InputError(
                f"state dict {key}: tensor '{name}' has dtype {t.dtype}, which meldkit cannot merge"
            ) from None
        tensors[name] = TensorInfo(
            name, code, tuple(t.shape), MEMORY, 0, t.numel() * t.element_size()
        )
    if not tensors:
        raise InputError(f"state dict {key} holds no tensors")
    return raw_input(key, ref, MEMORY, tensors)


def _entries(n: int) -> str:
    return "1 entry that is not a tensor is" if n == 1 else f"{n} entries that are not tensors are"
