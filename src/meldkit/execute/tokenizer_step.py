"""Writing the output tokenizer: the built vocabulary, or the donor's files copied."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from meldkit.plan.planner import MergePlan

__all__ = ["write_tokenizer"]


def write_tokenizer(plan: MergePlan, folder: Path, warn: Callable[[str], None]) -> None:
    """Save the tokenizer the plan decided on, with its chat template."""
    from meldkit.tokenizer import copy_tokenizer_files, save_tokenizer

    if plan.vocabulary is not None:
        save_tokenizer(plan.vocabulary, folder, plan.chat_template)
    else:
        copy_tokenizer_files(plan.models[plan.donor].folder, folder, plan.chat_template)
