"""``meldkit moe``: mixtures of experts built from dense models (MergeKit's ``mergekit-moe``).

The pipeline, one module each: the recipe (:mod:`~meldkit.moe.config`), the output
architectures (:mod:`~meldkit.moe.architectures`), the plan from headers
(:mod:`~meldkit.moe.plan`, :mod:`~meldkit.moe.tensors`), the routers
(:mod:`~meldkit.moe.routers`), the streaming build (:mod:`~meldkit.moe.build`), the model card
(:mod:`~meldkit.moe.card`) and the command line (:mod:`~meldkit.moe.cli`). Hidden-state routers
run the base model in :mod:`meldkit.moe.hidden_states`.

>>> plan = plan_moe("moe.yaml")            # headers only; every problem at once
>>> run_moe("moe.yaml", "out", seed=0)      # plan and build
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from meldkit.moe.config import MoeConfig, load_moe_config
from meldkit.moe.plan import MoeOptions, MoePlan, plan_moe

__all__ = ["MoeConfig", "MoeOptions", "MoePlan", "load_moe_config", "plan_moe", "run_moe"]


def run_moe(
    recipe: Any,
    out: str | Path,
    options: MoeOptions | None = None,
    on_warning: Callable[[str], None] | None = None,
    **build: Any,
) -> Path:
    """Plan ``recipe`` and build it into ``out``; ``build`` are
    :class:`~meldkit.moe.build.BuildOptions` fields (device, seed, overwrite, resume, ...).
    Plan warnings and build warnings go to ``on_warning``."""
    from meldkit.moe.build import BuildOptions, build_moe  # imports torch

    plan = plan_moe(recipe, options)
    for w in plan.warnings:
        if on_warning is not None:
            on_warning(w)
    return build_moe(plan, out, BuildOptions(quiet=True, **build), on_warning)
