"""Full-size checkpoints that cost no disk or memory: real headers over sparse holes.

:func:`make_header_only_model` writes a (default: Llama-70B-shaped) sharded checkpoint whose
configs, index and safetensors headers are real but whose tensor data is never written, so
planning over several 70B models can be tested on any machine.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from meldkit.testing.architectures import lookup
from meldkit.testing.checkpoint_files import (
    SAFETENSORS_DTYPES,
    clear_weights,
    dump_json,
    parse_dtype,
    shard_names,
    split_shards,
    write_index,
)
from meldkit.testing.models import config_dict, generation_config
from meldkit.testing.specs import TensorSpec


def _write_header_only_safetensors(
    path: Path, specs: Sequence[TensorSpec], dtype: torch.dtype
) -> int:
    """Write a valid safetensors header for ``specs`` and a sparse (hole) data section.

    Returns the data size in bytes. Layout: 8-byte little-endian header length, the JSON
    header padded with spaces to a multiple of 8 (as the safetensors library does), then the
    data, which is never written -- ``truncate`` just extends the file, so filesystems with
    sparse-file support allocate no blocks for it and reads return zeros.
    """
    st_dtype, itemsize = SAFETENSORS_DTYPES[dtype]
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    # safetensors orders same-dtype tensors by name; mirror it so these headers look real.
    for t in sorted(specs, key=lambda s: s.name):
        nbytes = itemsize
        for dim in t.shape:
            nbytes *= dim
        header[t.name] = {
            "dtype": st_dtype,
            "shape": list(t.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        f.truncate(8 + len(raw) + offset)
    return offset


def make_header_only_model(
    path: str | Path,
    arch: str = "llama",
    *,
    num_layers: int = 80,
    hidden: int = 8192,
    intermediate: int = 28672,
    vocab: int = 128256,
    heads: int = 64,
    kv_heads: int = 8,
    dtype: str = "bfloat16",
    shard_size: int = 5 * 10**9,
    num_experts: int = 8,
    tie_embeddings: bool | None = None,
    legacy_moe_names: bool = True,
) -> Path:
    """Write a full-size (default: Llama-70B-shaped) sharded checkpoint with no tensor data.

    Each ``model-0000i-of-0000N.safetensors`` has a valid header and the right file size, but
    its data section is a sparse hole (all zeros when read, no disk blocks), so planning a
    recipe over several 70B models costs neither disk nor memory. ``config.json``,
    ``generation_config.json`` and ``model.safetensors.index.json`` are real. No tokenizer is
    written (a 128k-entry one would dominate the cost). Do not :func:`read_model` it: that
    would materialise every (zero) byte.
    """
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    spec = lookup(arch)
    dims = spec.dims(
        num_layers=num_layers,
        hidden=hidden,
        intermediate=intermediate,
        vocab=vocab,
        heads=heads,
        kv_heads=kv_heads,
        num_experts=num_experts,
    )
    torch_dtype = parse_dtype(dtype)
    if torch_dtype not in SAFETENSORS_DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}")
    tie = spec.tie_default if tie_embeddings is None else tie_embeddings
    cfg = config_dict(spec, dims, tie=tie, dtype=torch_dtype)
    dump_json(out / "config.json", cfg)
    dump_json(out / "generation_config.json", generation_config(cfg))

    specs = spec.tensors(dims, tie=tie, legacy_moe_names=legacy_moe_names)
    by_name = {t.name: t for t in specs}
    itemsize = SAFETENSORS_DTYPES[torch_dtype][1]

    def nbytes(t: TensorSpec) -> int:
        n = itemsize
        for dim in t.shape:
            n *= dim
        return n

    clear_weights(out)
    groups = split_shards(((t.name, nbytes(t)) for t in specs), shard_size)
    files = shard_names(len(groups), "safetensors")
    weight_map: dict[str, str] = {}
    total = 0
    for fname, names in zip(files, groups, strict=True):
        total += _write_header_only_safetensors(
            out / fname, [by_name[n] for n in names], torch_dtype
        )
        weight_map.update(dict.fromkeys(names, fname))
    if len(files) > 1:
        write_index(out, "safetensors", weight_map, total, total // itemsize)
    return out
