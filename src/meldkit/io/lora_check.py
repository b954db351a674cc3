"""A LoRA adapter checked against its base model at plan time, from headers only.

Every ``lora_A`` / ``lora_B`` pair must agree on the rank its config gives (``r`` or
``rank_pattern``) and its product must have the shape of the base tensor it targets; saved full
tensors and bias deltas must have their base tensor's shape. A mismatch is an
:class:`InputError` (the merge would fail half-way otherwise). Targets that match no base
tensor, and patterns that match no module, are returned as warnings.

``adapter_model.safetensors`` is checked from its header (no tensor bytes, no torch). A pickled
``adapter_model.bin`` has no header: it is memory-mapped with torch to learn the shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from meldkit.errors import InputError
from meldkit.io.header import TensorInfo, read_header
from meldkit.io.lora_index import AdapterIndex, LoraModule, read_adapter_config

__all__ = ["check_adapter", "adapter_shapes"]

Shape = tuple[int, ...]
_DIFFERENT_BASE = "the adapter was trained for a different base model; pair it with that model"
_MAX_NAMED = 3


def adapter_shapes(folder: Path) -> tuple[Path, dict[str, Shape]]:
    """The adapter's weight file and the shape of every tensor in it."""
    st_path, bin_path = folder / "adapter_model.safetensors", folder / "adapter_model.bin"
    if st_path.is_file():
        return st_path, {name: info.shape for name, info in read_header(st_path).items()}
    if bin_path.is_file():
        return bin_path, _pickle_shapes(bin_path)
    raise InputError(
        f"{folder}: no adapter_model.safetensors or adapter_model.bin",
        hint="the adapter download is incomplete",
    )


def _pickle_shapes(path: Path) -> dict[str, Shape]:
    import torch  # only pickled adapters need it; mmap reads the pickle, not the tensor bytes

    try:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # the legacy (pre-zip) format cannot be memory-mapped
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad archive
        raise InputError(f"cannot read {path}: {exc}", hint="the file is corrupt") from None
    if not isinstance(state, dict):
        raise InputError(f"{path}: expected a dict of tensors", hint="the file is corrupt")
    return {str(k): tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}


def check_adapter(folder: Path, base_folder: Path, base: Mapping[str, TensorInfo]) -> list[str]:
    """Check the adapter in ``folder`` against the base tensors ``base`` (of ``base_folder``);
    returns warnings, raises :class:`InputError` for the first mismatch."""
    config = read_adapter_config(folder)
    file, shapes = adapter_shapes(folder)
    index = AdapterIndex(folder, config, shapes)
    unmatched = index.bind(base)
    for target, module in sorted(index.modules.items()):
        name = index.bound_name(target)
        if name is not None:
            _check_module(file, module, shapes, name, base[name].shape, config)
    for target, key in sorted([*index.replacements.items(), *_bias_keys(index)]):
        name = index.bound_name(target)
        if name is not None and shapes[key] != base[name].shape:
            raise InputError(
                f"{file}: '{key}' has shape {list(shapes[key])}, the base tensor '{name}' "
                f"{list(base[name].shape)}",
                hint=_DIFFERENT_BASE + " (or the same vocabulary size)",
            )
    warnings = []
    if unmatched:
        n = len(unmatched)
        which = "1 target matches" if n == 1 else f"{n} targets match"
        warnings.append(
            f"LoRA {folder}: {which} no tensor of {base_folder} and {'is' if n == 1 else 'are'} "
            f"not applied: {_some(unmatched)}"
        )
    unused = index.unused_patterns()
    if unused:
        verbs = (
            "matches no module of the adapter and changes"
            if len(unused) == 1
            else ("match no module of the adapter and change")
        )
        warnings.append(f"LoRA {folder / 'adapter_config.json'}: {_some(unused)} {verbs} nothing")
    return warnings


def _bias_keys(index: AdapterIndex) -> list[tuple[str, str]]:
    return [(target, key) for target, (key, _) in index.bias_deltas.items()]


def _some(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_NAMED])
    more = len(names) - _MAX_NAMED
    return f"{shown} (+{more} more)" if more > 0 else shown


def _check_module(
    file: Path,
    module: LoraModule,
    shapes: Mapping[str, Shape],
    name: str,
    base_shape: Shape,
    config: Mapping[str, object],
) -> None:
    a, b = shapes[module.a_key], shapes[module.b_key]
    pair = f"'{module.a_key}' {list(a)} and '{module.b_key}' {list(b)}"
    if len(a) != 2 or len(b) != 2:
        raise InputError(
            f"{file}: {pair} are not the matrices of a linear or embedding LoRA",
            hint="convolution LoRA is not supported; merge it with PEFT's merge_and_unload first",
        )
    if a[0] != b[1]:
        raise InputError(
            f"{file}: {pair} disagree on the rank ({a[0]} and {b[1]})",
            hint="the adapter file is corrupt; save the adapter again",
        )
    if a[0] != module.rank:
        raise InputError(
            f"{file}: {pair} have rank {a[0]}, but adapter_config.json gives rank "
            f"{module.rank} for '{module.target.removesuffix('.weight')}' (r or rank_pattern)",
            hint="fix r / rank_pattern in adapter_config.json to the rank the adapter was "
            "trained with",
        )
    # B @ A is (out, in); embeddings and GPT-2's Conv1D (fan_in_fan_out) store (in, out).
    product = (b[0], a[1])
    transposed = module.kind == "embedding" or bool(config.get("fan_in_fan_out"))
    expected = (a[1], b[0]) if transposed else product
    if expected != base_shape:
        raise InputError(
            f"{file}: LoRA for '{name}' has shape {list(expected)} ({pair}), the base tensor "
            f"{list(base_shape)}",
            hint=_DIFFERENT_BASE
            + (
                "" if transposed or product[::-1] != base_shape else " (or fan_in_fan_out is wrong)"
            ),
        )
