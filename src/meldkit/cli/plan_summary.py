"""The human summary of a plan that ``meldkit plan`` and ``meldkit demo`` print.

It lives apart from :mod:`meldkit.cli.commands` so that the demo can print it without
importing the subcommands (which import the demo): imports in ``cli`` point one way,
``commands -> demo -> plan_summary``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meldkit.io.sizes import format_size

if TYPE_CHECKING:
    from meldkit.plan import MergePlan

__all__ = ["describe_plan"]


def describe_plan(plan: MergePlan, list_tensors: bool = False) -> str:
    """A human summary of a plan: inputs, method, tensors, shards, bytes and memory."""
    lines = [f"method: {plan.method.name}", "inputs:"]
    for key, info in plan.models.items():
        extra = f" + LoRA {info.lora_folder}" if info.lora_folder else ""
        lines.append(
            f"  - {key} ({len(info.index.tensors)} tensors, {info.layout.num_layers} layers){extra}"
        )
    lines.append(
        f"output: {len(plan.tensors)} tensors, {plan.output_layers} layers, "
        f"{len(plan.shards)} shard{'s' if len(plan.shards) != 1 else ''}"
    )
    for shard in plan.shards:
        lines.append(
            f"  - {shard.filename}: {len(shard.entries)} tensors, {format_size(shard.file_size)}"
        )
    lines.append(f"bytes to read: {format_size(plan.bytes_to_read)}")
    lines.append(f"bytes to write: {format_size(plan.bytes_to_write)}")
    lines.append(f"estimated peak memory: {format_size(plan.peak_memory_estimate)}")
    if list_tensors:
        lines.append("tensors:")
        for t in plan.tensors:
            srcs = ", ".join(f"{s.model}:{s.name}" for s in t.sources)
            lines.append(f"  {t.name} {list(t.shape)} {t.out_dtype} <- {srcs}")
    return "\n".join(lines)
