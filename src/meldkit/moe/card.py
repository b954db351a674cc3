"""The MoE model card (README.md) and the recipe saved beside the model."""

from __future__ import annotations

from pathlib import Path

import yaml

from meldkit.card import RECIPE_FILENAME
from meldkit.moe.config import ExpertConfig
from meldkit.moe.plan import MoePlan

__all__ = ["write_moe_card", "write_moe_recipe", "MOE_RECIPE_FILENAME"]

# MergeKit's name for the MoE recipe beside the model; mergekit_config.yml is written too,
# as merges write it, for the hubs that look for that name.
MOE_RECIPE_FILENAME = "mergekit_moe_config.yml"


def write_moe_recipe(plan: MoePlan, folder: Path) -> None:
    """The recipe, verbatim (or a YAML dump of the dict it came from)."""
    text = plan.config.source_text or ""
    for name in (MOE_RECIPE_FILENAME, RECIPE_FILENAME):
        (folder / name).write_text(text, encoding="utf-8")


def _prompts(title: str, prompts: tuple[str, ...]) -> list[str]:
    if not prompts:
        return []
    return [f"  - {title}:"] + [f"    - `{p}`" for p in prompts]


def _expert_lines(i: int, e: ExpertConfig, shared: bool) -> list[str]:
    extra = []
    if e.noise_scale:
        extra.append(f"noise_scale {e.noise_scale:g}")
    if e.residual_scale is not None:
        extra.append(f"residual_scale {e.residual_scale:g}")
    label = "shared expert" if shared else f"expert {i}"
    more = f" ({', '.join(extra)})" if extra else ""
    lines = [f"- **{label}**: `{e.source_model}`{more}"]
    lines += _prompts("positive prompts", e.positive_prompts)
    lines += _prompts("negative prompts", e.negative_prompts)
    return lines


def write_moe_card(plan: MoePlan, folder: Path) -> None:
    """README.md: hub front matter, the architecture, the experts with their prompts, the
    router and the recipe."""
    config = plan.config
    front = {"library_name": "transformers", "tags": ["moe", "merge", "meldkit"]}
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", ""]
    lines += [
        f"# {plan.arch.title} mixture of experts",
        "",
        f"Built with meldkit (`meldkit moe`) from the base model `{config.base_model}`: "
        f"{plan.n_routed} experts, {config.experts_per_token} per token, router from "
        f"`gate_mode: {config.gate_mode}`. Attention, norms and embeddings are the base "
        "model's; each expert is the MLP of its source model.",
        "",
        "## Experts",
        "",
    ]
    for i, e in enumerate(config.experts):
        lines += _expert_lines(i, e, shared=False)
    for e in config.shared_experts:
        lines += _expert_lines(0, e, shared=True)
    if not plan.arch.native:
        lines += [
            "",
            f"{plan.arch.title} is not part of transformers: loading this model needs "
            "`trust_remote_code=True` and the code of deepseek-ai/deepseek-moe-16b-base.",
        ]
    lines += ["", "## Recipe", "", "```yaml", (config.source_text or "").rstrip(), "```", ""]
    (folder / "README.md").write_text("\n".join(lines), encoding="utf-8")
