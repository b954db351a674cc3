"""The Python API: ``run_merge(recipe, out_path, **options)`` and friends."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meldkit.errors import MeldError
from meldkit.plan.planner import MergePlan, PlanOptions, plan_merge

__all__ = ["run_merge", "split_options"]

_PLAN_FIELDS = {f.name for f in dataclasses.fields(PlanOptions)}


def split_options(options: dict[str, Any]) -> tuple[PlanOptions, Any]:
    """Split keyword options into PlanOptions and RunOptions; unknown names are an error."""
    from meldkit.execute.runner import RunOptions

    run_fields = {f.name for f in dataclasses.fields(RunOptions)}
    unknown = set(options) - _PLAN_FIELDS - run_fields
    if unknown:
        raise MeldError(
            f"unknown option(s) {', '.join(sorted(unknown))}",
            hint="valid options: " + ", ".join(sorted(_PLAN_FIELDS | run_fields)),
        )
    plan_opts = {k: v for k, v in options.items() if k in _PLAN_FIELDS}
    if isinstance(plan_opts.get("out_shard_size"), str):
        from meldkit.io.sizes import parse_size

        plan_opts["out_shard_size"] = parse_size(plan_opts["out_shard_size"])
    return PlanOptions(**plan_opts), RunOptions(
        **{k: v for k, v in options.items() if k in run_fields}
    )


def run_merge(
    recipe: Any,
    out_path: str | Path,
    *,
    on_warning: Callable[[str], None] | None = None,
    **options: Any,
) -> MergePlan:
    """Plan and execute a merge; returns the plan that was executed.

    ``recipe``: a path, YAML text, a dict or a MergeConfig. ``options``: PlanOptions fields
    (``out_shard_size`` as bytes or "5GB", ``unsafe_truncate_embeddings``, ``strict``,
    ``cache_dir``) and RunOptions fields (``device``, ``threads``, ``seed``, ``quiet``,
    ``copy_tokenizer``, ``write_model_card``, ``overwrite``, ``resume``, and ``policy``: an
    :class:`~meldkit.execute.policy.EnginePolicy`). Planning checks everything first; nothing
    is computed when it fails.
    """
    from meldkit.execute.runner import execute_plan

    plan_options, run_options = split_options(options)
    plan = plan_merge(recipe, plan_options)
    if on_warning is not None:
        for w in plan.warnings:
            on_warning(w)
    execute_plan(plan, out_path, run_options, on_warning)
    return plan
