"""What ``meldkit plan`` prints for a MoE recipe (torch-free, like all planning)."""

from __future__ import annotations

from typing import Any

from meldkit.io.sizes import format_size
from meldkit.moe.config import ExpertConfig
from meldkit.moe.plan import MoePlan

__all__ = ["describe_moe_plan", "moe_plan_json"]


def _expert_line(label: str, e: ExpertConfig) -> str:
    extra = [f"{len(e.positive_prompts)} positive / {len(e.negative_prompts)} negative prompts"]
    if e.noise_scale:
        extra.append(f"noise_scale {e.noise_scale:g}")
    if e.residual_scale is not None:
        extra.append(f"residual_scale {e.residual_scale:g}")
    return f"  - {label}: {e.source_model} ({', '.join(extra)})"


def describe_moe_plan(plan: MoePlan, list_tensors: bool = False) -> str:
    """Inputs, experts, output architecture, tensors, shards, bytes and peak memory."""
    config = plan.config
    base = plan.models[plan.base]
    layout = plan.arch.layout(plan.options.expert_layout)
    lines = [
        f"tool: moe ({plan.arch.title}, model_type {plan.arch.model_type}, {layout} experts)",
        f"base: {base.key} ({base.layout.num_layers} layers, hidden {plan.hidden})",
        f"router: gate_mode {config.gate_mode}, {config.experts_per_token} expert(s) per token",
        "experts:",
    ]
    lines += [_expert_line(f"expert {i}", e) for i, e in enumerate(config.experts)]
    lines += [_expert_line("shared", e) for e in config.shared_experts]
    lines.append(
        f"output: {len(plan.tensors)} tensors in {len(plan.shards)} shard(s), "
        f"{plan.dtype}, {format_size(plan.total_bytes)} written"
    )
    lines.append(f"reads: {format_size(plan.read_bytes)} from the inputs")
    peak = f"peak tensor memory: about {format_size(plan.peak_bytes)} (one expert projection"
    peak += " at a time, whatever the expert count)"
    if config.gate_mode.startswith("hidden"):
        peak += "; the hidden-state router first runs the base model over the prompts"
    lines.append(peak)
    if list_tensors:
        lines.append("tensors:")
        for t in plan.tensors:
            lines.append(f"  {t.name} {list(t.spec.shape)} ({t.kind})")
    return "\n".join(lines)


def _expert_json(e: ExpertConfig, shared: bool) -> dict[str, Any]:
    return {
        "source_model": str(e.source_model),
        "shared": shared,
        "positive_prompts": list(e.positive_prompts),
        "negative_prompts": list(e.negative_prompts),
        "noise_scale": e.noise_scale,
        "residual_scale": e.residual_scale,
    }


def moe_plan_json(plan: MoePlan) -> dict[str, Any]:
    """The whole plan as JSON-ready data (``meldkit plan --json`` for a MoE recipe)."""
    config = plan.config
    tensors = []
    for t in plan.tensors:
        sources = [t.source] if t.source else [s for b in t.blocks for s in b.parts]
        tensors.append(
            {
                "name": t.name,
                "shape": list(t.spec.shape),
                "dtype": t.spec.dtype,
                "kind": t.kind,
                "sources": [[s.model, s.name] for s in sources],
            }
        )
    return {
        "tool": "moe",
        "architecture": plan.arch.name,
        "model_type": plan.arch.model_type,
        "expert_layout": plan.arch.layout(plan.options.expert_layout),
        "base_model": plan.base,
        "gate_mode": config.gate_mode,
        "experts_per_token": config.experts_per_token,
        "experts": [_expert_json(e, False) for e in config.experts]
        + [_expert_json(e, True) for e in config.shared_experts],
        "dtype": plan.dtype,
        "config": plan.out_config,
        "tensors": tensors,
        "shards": [
            {"filename": s.filename, "file_size": s.file_size, "tensors": len(s.entries)}
            for s in plan.shards
        ],
        "bytes": {"read": plan.read_bytes, "written": plan.total_bytes, "peak": plan.peak_bytes},
        "warnings": list(plan.warnings),
    }
