"""Writing the output tokenizer: copy the donor's files, or build a new vocabulary."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from meldkit.plan.planner import MergePlan

__all__ = ["write_tokenizer"]

_TOKENIZER_FILES = (
    "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer.model",
    "added_tokens.json", "merges.txt", "vocab.json", "vocab.txt", "chat_template.jinja",
    "chat_template.json",
)  # fmt: skip


def write_tokenizer(plan: MergePlan, folder: Path, warn: Callable[[str], None]) -> None:
    donor = plan.models[plan.donor].folder
    for name in _TOKENIZER_FILES:
        if (donor / name).is_file():
            shutil.copyfile(donor / name, folder / name)
