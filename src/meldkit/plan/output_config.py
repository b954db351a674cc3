"""The output config.json: the donor's config with the layer count, per-layer lists, dtype and
tied-embedding flag made true for the merged weights."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from meldkit.config.schema import MergeConfig
from meldkit.io.dtypes import parse_dtype_name
from meldkit.plan.architecture import set_config_key, tied_head_name
from meldkit.plan.models import InputModelInfo

if TYPE_CHECKING:
    from meldkit.plan.types import TensorPlan

__all__ = ["output_config"]

_DTYPE_NAMES = {
    "BF16": "bfloat16",
    "F16": "float16",
    "F32": "float32",
    "F64": "float64",
    "I64": "int64",
}


def _remap_layer_lists(
    node: dict[str, Any],
    donor_layers: int,
    origins: list[tuple[str, int]],
    models: dict[str, InputModelInfo],
    sub: str | None,
) -> None:
    """Per-layer config lists (``layer_types``, per-layer window sizes...) follow the layers:
    output layer i takes the entry of the layer it was copied from, in that layer's model."""
    for key, value in list(node.items()):
        if not isinstance(value, list) or len(value) != donor_layers or not donor_layers:
            continue
        remapped = []
        for model, index in origins:
            cfg = models[model].config or {}
            src = cfg.get(sub, {}) if sub else cfg
            column = src.get(key) if isinstance(src, dict) else None
            remapped.append(
                column[index]
                if isinstance(column, list) and index < len(column)
                else value[index % len(value)]
            )
        node[key] = remapped


def output_config(
    config: MergeConfig,
    models: dict[str, InputModelInfo],
    donor: InputModelInfo,
    origins: list[tuple[str, int]],
    tensors: list[TensorPlan],
) -> dict[str, Any] | None:
    if donor.config is None:
        return None
    out = copy.deepcopy(donor.config)
    key = donor.layout.config_layer_key
    layers = len(origins)
    if key is not None and donor.layout.config_layers is not None and layers:
        set_config_key(out, key, layers)
        donor_layers = donor.layout.config_layers
        _remap_layer_lists(out, donor_layers, origins, models, None)
        if isinstance(out.get("text_config"), dict) and key.startswith("text_config."):
            _remap_layer_lists(out["text_config"], donor_layers, origins, models, "text_config")
    dtype = config.out_dtype or config.dtype
    if dtype:
        name = _DTYPE_NAMES.get(parse_dtype_name(dtype), dtype)
        out["torch_dtype"] = name
        if "dtype" in out:
            out["dtype"] = name
    names = {t.name for t in tensors}
    head = tied_head_name(donor.layout)
    if out.get("tie_word_embeddings") and head in names:
        # The output carries its own head; a tied config would make transformers ignore it.
        out["tie_word_embeddings"] = False
    return out
