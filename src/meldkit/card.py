"""Model card (README.md) and provenance files written next to the merged weights."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from meldkit.plan.planner import MergePlan

__all__ = ["write_card", "write_recipe", "RECIPE_FILENAME"]

# The file name model hubs and leaderboards read to recognise a merge.
RECIPE_FILENAME = "mergekit_config.yml"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def _display(model: str) -> str:
    return model


def _hub_ids(plan: MergePlan) -> list[str]:
    ids = []
    for info in plan.models.values():
        path = info.ref.model.path
        if _HUB_ID.match(path) and not Path(path).exists():
            ids.append(path)
    return ids


def write_recipe(plan: MergePlan, folder: Path) -> None:
    """Save the recipe verbatim (or a YAML dump of the dict it came from)."""
    text = plan.config.source_text or ""
    (folder / RECIPE_FILENAME).write_text(text, encoding="utf-8")


def write_card(plan: MergePlan, folder: Path) -> None:
    """README.md with hub front matter, the method and its paper, the models and the recipe."""
    method = plan.method
    front = {
        "base_model": _hub_ids(plan),
        "library_name": "transformers",
        "tags": ["merge", "meldkit"],
    }
    if not front["base_model"]:
        del front["base_model"]
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).rstrip(),
        "---",
        "",
        "# Merged model",
        "",
    ]
    link = (
        f"[{method.pretty_name}]({method.reference_url})"
        if method.reference_url
        else method.pretty_name
    )
    lines.append(
        f"This model was merged with [meldkit](https://github.com/meldkit/meldkit) using the {link} merge method"
    )
    base = plan.config.base_model
    if base is not None and method.name not in ("slerp", "passthrough"):
        lines[-1] += f", with {_display(str(base))} as the base"
    lines[-1] += "."
    lines += ["", "## Models merged", ""]
    lines += [f"- {_display(key)}" for key in plan.models]
    lines += ["", "## Recipe", "", "```yaml", (plan.config.source_text or "").rstrip(), "```", ""]
    (folder / "README.md").write_text("\n".join(lines), encoding="utf-8")
