"""The cache of intermediates: a stage is skipped when its output was made from the same
recipe and the same inputs.

MergeKit skips a stage whenever its output folder has a config.json, so an edited recipe or a
changed input silently reuses a stale intermediate. Here each intermediate is stored with a
key beside it (``DIR/<name>.meldkit-stage.json``): a hash of the stage's canonical recipe
(stage names kept as names), the keys of the stages it reads (so a change upstream reaches
every dependant), the identity of every other input folder (each file's name, size and
modification time, and for safetensors files a hash of the header: names, dtypes, shapes,
offsets), the plan options, the seed, the device kind and meldkit's version. A record is valid
only while the folder still holds the shards it lists, with their sizes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from meldkit.plan.types import MergePlan

__all__ = ["stage_key", "record_path", "is_cached", "write_record", "forget", "folder_identity"]

RECORD_SUFFIX = ".meldkit-stage.json"


def _header_hash(path: Path) -> str:
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        return hashlib.sha256(fh.read(min(n, 100_000_000))).hexdigest()


def folder_identity(folder: Path) -> list[list[Any]]:
    """Every file of ``folder`` (recursively, hidden ones left out) as ``[name, size, mtime,
    header hash]``; the header hash only for safetensors files (None for others)."""
    found: list[list[Any]] = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        st = path.stat()
        digest = _header_hash(path) if path.suffix == ".safetensors" else None
        found.append([rel.as_posix(), st.st_size, st.st_mtime_ns, digest])
    return found


def stage_key(
    recipe: Mapping[str, Any],
    plan: MergePlan,
    upstream: Mapping[str, str],
    intermediate_folders: set[Path],
    run: Mapping[str, Any],
) -> str:
    """The cache key of a stage: ``recipe`` (the stage's document, names unresolved),
    ``upstream`` (the keys of the stages it reads, by name), the identity of each input of
    ``plan`` that is not an intermediate, and ``run`` (what else decides the bytes)."""
    from meldkit import __version__

    inputs: dict[str, Any] = {}
    for key, model in sorted(plan.models.items()):
        if model.folder.resolve() in intermediate_folders:
            continue
        inputs[key] = folder_identity(model.folder)
    for key, model in sorted(plan.models.items()):
        if model.lora_folder is not None:
            inputs[f"{key} (LoRA)"] = folder_identity(model.lora_folder)
    options = dataclasses.asdict(plan.options)
    options.pop("cache_dir", None)  # where hub files are cached changes no byte
    doc = {
        "meldkit": __version__,
        "recipe": recipe,
        "upstream": dict(sorted(upstream.items())),
        "inputs": inputs,
        "options": options,
        "run": dict(run),
    }
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def record_path(folder: Path) -> Path:
    """Where the cache record of the intermediate ``folder`` is kept: beside it."""
    return folder.with_name(folder.name + RECORD_SUFFIX)


def _shard_sizes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(folder.glob("*.safetensors"))}


def is_cached(folder: Path, key: str) -> bool:
    """Whether ``folder`` holds the output made under ``key``, with its shards unchanged."""
    try:
        record = json.loads(record_path(folder).read_text(encoding="utf-8"))
        shards = record["shards"]
        if record.get("key") != key or not shards or not folder.is_dir():
            return False
        return bool(_shard_sizes(folder) == shards)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def write_record(folder: Path, key: str) -> None:
    """Record that ``folder`` was made under ``key`` (atomically, after the folder is whole)."""
    path = record_path(folder)
    tmp = path.with_name(path.name + ".tmp")
    body = {"key": key, "shards": _shard_sizes(folder)}
    tmp.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def forget(folder: Path) -> None:
    """Drop ``folder``'s record before it is rebuilt, so a crash never leaves a stale one."""
    record_path(folder).unlink(missing_ok=True)
