"""Skeleton folders: a stage's output as its plan describes it, before it is computed.

A later stage is planned from its inputs' headers, but an intermediate does not exist until
its stage has run. Its plan knows everything the headers would say (every output tensor's
name, dtype, shape and offset: the shard headers themselves) and the metadata a model folder
carries (config.json, the tokenizer), so the skeleton is that folder with each shard's exact
header followed by a *sparse* data section: ``truncate`` gives the file its full size without
writing, or allocating, its data. The planner reads it like any model folder, which is how
``meldkit plan`` shows a whole chain and how ``--no-intermediates`` plans a stage against an
intermediate that is never written. Its tensor bytes are never read: they would be zeros.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from meldkit.io.writer import INDEX_FILENAME
from meldkit.plan.types import MergePlan

__all__ = ["write_skeleton"]


def write_skeleton(
    plan: MergePlan, folder: Path, warn: Callable[[str], None], copy_tokenizer: bool = True
) -> Path:
    """Write the skeleton of ``plan``'s output into the new folder ``folder``; returns it."""
    folder.mkdir(parents=True)
    for layout in plan.shards:
        with open(folder / layout.filename, "wb") as fh:
            fh.write(layout.header)
            fh.truncate(layout.file_size)  # sparse: the data section takes no disk blocks
    if len(plan.shards) > 1:
        weight_map = {e.spec.name: s.filename for s in plan.shards for e in s.entries}
        body = {
            "metadata": {"total_size": sum(s.data_bytes for s in plan.shards)},
            "weight_map": weight_map,
        }
        (folder / INDEX_FILENAME).write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
    if plan.out_config is not None:
        text = json.dumps(plan.out_config, indent=2, sort_keys=True) + "\n"
        (folder / "config.json").write_text(text, encoding="utf-8")
    generation = plan.models[plan.donor].folder / "generation_config.json"
    if generation.is_file():
        shutil.copyfile(generation, folder / "generation_config.json")
    if copy_tokenizer:
        # A later stage may take its tokenizer (or build a union) from this one.
        from meldkit.execute.tokenizer_step import write_tokenizer

        write_tokenizer(plan, folder, warn)
    return folder
