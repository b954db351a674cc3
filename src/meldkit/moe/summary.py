"""What ``meldkit plan`` prints for a MoE recipe (torch-free, like all planning)."""

from __future__ import annotations

from meldkit.io.sizes import format_size
from meldkit.moe.config import ExpertConfig
from meldkit.moe.plan import MoePlan

__all__ = ["describe_moe_plan"]


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
