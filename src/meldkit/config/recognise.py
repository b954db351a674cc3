"""Recognising files that are not merge recipes meldkit can run.

A MergeKit MoE recipe, an evolve configuration or a multi-stage file fed to ``meldkit merge``
would otherwise get a schema error about the first key it lacks ("missing 'merge_method'"),
which sends the user looking for a typo. Instead, say what the file is and which tool runs it
(``meldkit multi`` for a multi-stage recipe).
"""

from __future__ import annotations

import shlex
from typing import Any

from meldkit.config.keys import TOP_KEYS, typo_of
from meldkit.errors import RecipeError

__all__ = ["other_tool_error", "multi_document_error", "list_recipe_error"]

# (what the file is, its tell-tale keys, what meldkit lacks for it or "", what to do instead)
_OTHER_TOOLS: tuple[tuple[str, tuple[str, ...], str, str], ...] = (
    (
        "a mergekit-moe recipe",
        ("experts", "gate_mode", "experts_per_token", "shared_experts"),
        "",
        "build it with `meldkit moe RECIPE OUT`; `meldkit merge` merges models that already "
        "are MoE (Mixtral, Qwen3-MoE) with merge recipes",
    ),
    (
        "a mergekit-evolve configuration",
        ("genome", "tasks", "fitness"),
        "",
        "run the search with `meldkit evolve SEARCH --storage DIR`; it writes a merge recipe, "
        "DIR/best_recipe.yaml",
    ),
    (
        "a bakllama configuration",
        ("layer_slices", "embedding_source", "lm_head_source"),
        "bakllama configurations",
        "write it as a passthrough recipe: `merge_method: passthrough` with `slices:`",
    ),
    (
        "a LoRA adapter's adapter_config.json",
        ("peft_type", "target_modules"),
        "",
        "give the recipe YAML, naming the adapter as `model: <base>+<adapter folder>`",
    ),
    (
        "a model's config.json",
        ("architectures", "model_type"),
        "",
        "give the recipe YAML; the model folder goes under `models:`",
    ),
)


def other_tool_error(data: dict[str, Any]) -> RecipeError | None:
    """The error for a mapping that is another tool's file, or None for a merge recipe.

    A file with ``merge_method`` (or a misspelling of it) is always read as a merge recipe: its
    stray keys are only warned about, as MergeKit ignores them.
    """
    if "merge_method" in data or typo_of(data, ["merge_method"], TOP_KEYS)[0]:
        return None
    for what, keys, lacking, hint in _OTHER_TOOLS:
        found = [k for k in keys if k in data]
        if not found:
            continue
        message = f"this is {what} ({', '.join(found)}), not a merge recipe"
        if lacking:
            message += f"; meldkit does not support {lacking} yet"
        return RecipeError(message, hint=hint)
    return None


def _is_merge(doc: Any) -> bool:
    return isinstance(doc, dict) and "merge_method" in doc


def _stage_names(docs: list[Any]) -> str:
    names = [str(d["name"]) for d in docs if isinstance(d, dict) and d.get("name") is not None]
    return f": {', '.join(names)}" if names else ""


def _quoted(origin: str) -> str:
    """``origin`` as a shell word: the file name, or RECIPE when the text came inline."""
    if origin == "recipe":
        return "RECIPE"
    return shlex.quote(origin)


def multi_document_error(docs: list[Any], origin: str) -> RecipeError:
    """The error for a file holding several YAML documents."""
    n = len(docs)
    if all(_is_merge(d) for d in docs):
        return RecipeError(
            f"{origin}: holds {n} YAML documents, a multi-stage (mergekit-multi) recipe of "
            f"{n} merges{_stage_names(docs)}; `meldkit merge` runs a single recipe",
            hint=f"use `meldkit multi {_quoted(origin)} --out OUT --intermediate-dir DIR` "
            "(`meldkit plan` shows the whole chain)",
        )
    return RecipeError(
        f"{origin}: holds {n} YAML documents; a recipe is one document",
        hint="remove the extra '---' lines, or split the file into one recipe per file",
    )


def list_recipe_error(data: list[Any]) -> RecipeError:
    """The error for a recipe that is a YAML list instead of a mapping."""
    if data and all(_is_merge(d) for d in data):
        return RecipeError(
            f"the recipe is a list of {len(data)} merges{_stage_names(data)}, a multi-stage "
            "recipe; `meldkit merge` runs a single recipe",
            hint="use `meldkit multi RECIPE --out OUT --intermediate-dir DIR` "
            "(`meldkit plan` shows the whole chain)",
        )
    return RecipeError(
        "the recipe must be a mapping of keys, got list", hint="start with `merge_method: linear`"
    )
