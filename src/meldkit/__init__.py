"""meldkit: streaming, memory-bounded merging of LLM checkpoints from MergeKit YAML recipes.

>>> import meldkit
>>> meldkit.run_merge("recipe.yaml", "./merged")            # doctest: +SKIP
>>> plan = meldkit.plan_merge("recipe.yaml")                # headers only, nothing computed

Names are imported on first use, so ``import meldkit`` (and ``meldkit --help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "run_merge": "meldkit.api",
    "load_config": "meldkit.config",
    "MergeConfig": "meldkit.config",
    "plan_merge": "meldkit.plan",
    "MergePlan": "meldkit.plan",
    "PlanOptions": "meldkit.plan",
    "MeldError": "meldkit.errors",
    "RecipeError": "meldkit.errors",
    "InputError": "meldkit.errors",
    "PlanError": "meldkit.errors",
    "OutputError": "meldkit.errors",
    "MergeRuntimeError": "meldkit.errors",
}

__all__ = [
    "InputError",
    "MeldError",
    "MergeConfig",
    "MergePlan",
    "MergeRuntimeError",
    "OutputError",
    "PlanError",
    "PlanOptions",
    "RecipeError",
    "__version__",
    "load_config",
    "plan_merge",
    "run_merge",
]

if TYPE_CHECKING:
    from meldkit.api import run_merge
    from meldkit.config import MergeConfig, load_config
    from meldkit.errors import (
        InputError,
        MeldError,
        MergeRuntimeError,
        OutputError,
        PlanError,
        RecipeError,
    )
    from meldkit.plan import MergePlan, PlanOptions, plan_merge


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'meldkit' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
