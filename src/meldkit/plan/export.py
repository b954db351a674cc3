"""The whole plan as JSON-ready data: what ``meldkit plan --json`` prints.

:func:`plan_to_dict` (also :meth:`MergePlan.to_dict <meldkit.plan.types.MergePlan.to_dict>`)
returns plain dicts, lists, strings, numbers, booleans and ``None`` in a fixed key order, so
``json.dumps`` works without a custom encoder and two runs on the same inputs print the same
text. Paths are strings; sizes are bytes. Torch-free.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meldkit.plan.types import MergePlan, TensorPlan, TensorSource

__all__ = ["plan_to_dict", "FORMAT_VERSION"]

# Bumped when a key is renamed or removed (adding keys keeps the version).
FORMAT_VERSION = 1


def plan_to_dict(plan: MergePlan) -> dict[str, Any]:
    """The plan as JSON-ready data: method, inputs, output (shards, bytes, memory), every
    tensor (name, shape, dtype, method, sources, resolved parameters) and the warnings."""
    config = plan.config
    return {
        "format_version": FORMAT_VERSION,
        "method": plan.method.name,
        "base_model": str(config.base_model) if config.base_model is not None else None,
        "donor": plan.donor,
        "dtype": config.dtype,
        "out_dtype": config.out_dtype,
        "inputs": [_input(key, info) for key, info in plan.models.items()],
        "output": {
            "tensors": len(plan.tensors),
            "layers": plan.output_layers,
            "bytes_to_read": plan.bytes_to_read,
            "norm_match": plan.norm_match,  # the target norm of the pre-pass, or None
            "prepass_bytes": plan.prepass_bytes,
            "bytes_to_write": plan.bytes_to_write,
            "peak_memory_estimate": plan.peak_memory_estimate,
            "shard_size_limit": plan.options.out_shard_size,
            "shards": [
                {
                    "filename": shard.filename,
                    "bytes": shard.file_size,
                    "tensors": [entry.spec.name for entry in shard.entries],
                }
                for shard in plan.shards
            ],
            "config": _jsonable(plan.out_config),
            "tokenizer": _tokenizer(plan),
            "chat_template": plan.chat_template,
        },
        "tensors": [_tensor(plan, t) for t in plan.tensors],
        "warnings": list(plan.warnings),
    }


def _input(key: str, info: Any) -> dict[str, Any]:
    return {
        "model": key,
        "folder": str(info.folder),
        "lora": str(info.lora_folder) if info.lora_folder else None,
        "tensors": len(info.index.tensors),
        "layers": info.layout.num_layers,
    }


def _tokenizer(plan: MergePlan) -> dict[str, Any] | None:
    vocab = plan.vocabulary
    if vocab is None:
        return None
    return {
        "base": str(vocab.base_key),
        "vocab_size": int(vocab.size),
        "tokens": int(vocab.tokenizer_length),
        "changed": bool(vocab.changed),
    }


def _tensor(plan: MergePlan, t: TensorPlan) -> dict[str, Any]:
    return {
        "name": t.name,
        "shape": list(t.shape),
        "dtype": t.out_dtype,
        "bytes": t.out_nbytes,
        # A byte copy (passthrough, or an integer buffer) runs no method at all.
        "method": "copy" if t.copy else plan.method.name,
        "load_dtype": t.load_dtype,
        "work_dtype": t.work_dtype,
        "parameters": {k: _jsonable(v) for k, v in t.shared.items()},
        "modifiers": {"lines_scale": t.lines_scale, "norm_match": t.norm_match},
        "sources": [
            _source(s, i == t.base_index, t.per_input[i] if i < len(t.per_input) else {})
            for i, s in enumerate(t.sources)
        ],
    }


def _source(s: TensorSource, is_base: bool, params: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": s.model,
        "tensor": s.name,
        "shape": list(s.info.shape),
        "dtype": s.info.dtype,
        "base": is_base,
        "parameters": {k: _jsonable(v) for k, v in params.items()},
    }


def _jsonable(value: Any) -> Any:
    """``value`` with tuples as lists, keys as strings and non-finite floats as strings
    (``"inf"``), which strict JSON readers reject as numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
