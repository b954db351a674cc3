"""The files of a checkpoint folder, written and read the way transformers does.

JSON with transformers' formatting, dtype names, the greedy shard split of ``save_pretrained``,
shard file names and the index, writing weights as safetensors or ``.bin``, and
:func:`read_model` to load them back.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}
#: Canonical spelling used in config.json ("dtype") and safetensors headers.
DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float32: "float32",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
}
#: safetensors header dtype and item size of each supported dtype.
SAFETENSORS_DTYPES: dict[torch.dtype, tuple[str, int]] = {
    torch.float32: ("F32", 4),
    torch.float16: ("F16", 2),
    torch.bfloat16: ("BF16", 2),
}

# Weight files this package writes; a folder is cleared of these before rewriting so a re-run
# with a different shard count never leaves stale shards behind.
_WEIGHT_GLOBS = (
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model-*-of-*.bin",
    "pytorch_model.bin.index.json",
)


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """The torch dtype for a name (``"bf16"``, ``"float32"`` ...) or a supported dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPE_NAMES:
            raise ValueError(f"unsupported dtype {dtype}; use float32, float16 or bfloat16")
        return dtype
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unsupported dtype {dtype!r}; use one of {sorted(_DTYPES)}") from None


def dump_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as transformers writes configs and indexes."""
    # indent=2, sorted keys and a trailing newline, as save_pretrained does.
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def clear_weights(path: Path) -> None:
    """Delete the weight files and indexes this package may have written in ``path``."""
    for pattern in _WEIGHT_GLOBS:
        for f in path.glob(pattern):
            f.unlink()


def split_shards(sizes: Iterable[tuple[str, int]], shard_size: int | None) -> list[list[str]]:
    """Greedy split in model order, as save_pretrained does: a new shard starts when the next
    tensor would overflow the current one; a tensor larger than ``shard_size`` gets its own."""
    shards: list[list[str]] = [[]]
    current = 0
    for name, nbytes in sizes:
        if shard_size is not None and shards[-1] and current + nbytes > shard_size:
            shards.append([])
            current = 0
        shards[-1].append(name)
        current += nbytes
    return shards


def shard_names(n: int, fmt: str) -> list[str]:
    """File names of ``n`` shards (one unsharded file when ``n == 1``)."""
    stem, ext = ("model", "safetensors") if fmt == "safetensors" else ("pytorch_model", "bin")
    if n == 1:
        return [f"{stem}.{ext}"]
    return [f"{stem}-{i:05d}-of-{n:05d}.{ext}" for i in range(1, n + 1)]


def write_index(
    path: Path, fmt: str, weight_map: Mapping[str, str], total_size: int, total_params: int
) -> None:
    """Write the ``*.index.json`` of a sharded checkpoint (v5 adds ``total_parameters``)."""
    index_name = (
        "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    )
    dump_json(
        path / index_name,
        {
            "metadata": {"total_parameters": total_params, "total_size": total_size},
            "weight_map": dict(sorted(weight_map.items())),
        },
    )


def write_weights(
    path: Path, tensors: Mapping[str, torch.Tensor], *, fmt: str, shard_size: int | None
) -> None:
    """Write ``tensors`` (in model order) as ``fmt`` files, sharded past ``shard_size`` bytes."""
    if fmt not in ("safetensors", "bin"):
        raise ValueError(f"fmt must be 'safetensors' or 'bin', not {fmt!r}")
    clear_weights(path)
    groups = split_shards(
        ((n, t.numel() * t.element_size()) for n, t in tensors.items()), shard_size
    )
    files = shard_names(len(groups), fmt)
    weight_map: dict[str, str] = {}
    for fname, names in zip(files, groups, strict=True):
        part = {n: tensors[n].contiguous() for n in names}
        if fmt == "safetensors":
            save_file(part, str(path / fname), metadata={"format": "pt"})
        else:
            torch.save(part, path / fname)
        weight_map.update(dict.fromkeys(names, fname))
    if len(files) > 1:
        write_index(
            path,
            fmt,
            weight_map,
            sum(t.numel() * t.element_size() for t in tensors.values()),
            sum(t.numel() for t in tensors.values()),
        )


def _weight_files(path: Path) -> list[Path]:
    """The weight files of a folder, preferring safetensors like transformers does."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = path / index_name
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            return [path / f for f in sorted(set(weight_map.values()))]
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (path / single).is_file():
            return [path / single]
    for pattern in ("*.safetensors", "*.bin"):
        found = sorted(path.glob(pattern))
        if found:
            return found
    raise FileNotFoundError(f"no safetensors or .bin weights in {path}")


def read_model(path: str | Path) -> dict[str, torch.Tensor]:
    """Load every tensor of a model folder (safetensors or ``.bin``, sharded or not) on CPU.

    ``.bin`` files are loaded with ``weights_only=True`` so a test can never execute pickled
    code from a checkpoint.
    """
    out: dict[str, torch.Tensor] = {}
    for f in _weight_files(Path(path)):
        if f.suffix == ".safetensors":
            part = load_file(str(f))
        else:
            part = torch.load(f, map_location="cpu", weights_only=True)
        dup = out.keys() & part.keys()
        if dup:
            raise ValueError(f"tensor(s) stored twice in {path}: {sorted(dup)[:3]}")
        out.update(part)
    return out
