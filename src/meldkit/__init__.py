"""meldkit: streaming, memory-bounded merging of LLM checkpoints from MergeKit YAML recipes.

>>> import meldkit
>>> meldkit.run_merge("recipe.yaml", "./merged")            # doctest: +SKIP
>>> plan = meldkit.plan_merge("recipe.yaml")                # headers only, nothing computed

Recipe and merge warnings are emitted as :class:`MeldWarning` through Python's ``warnings``
(or passed to an ``on_warning`` callback); errors are :class:`MeldError` subclasses whose hints
name keyword options (``overwrite=True``). Names are imported on first use, so
``import meldkit`` (and ``meldkit --help``) stays fast and never imports torch.
"""

from __future__ import annotations

# Only the API is visible: helpers are private names, so that dir(meldkit) is __all__.
import importlib as _importlib
import typing as _typing

__version__ = "0.1.0"

_EXPORTS = {
    "run_merge": "meldkit.api",
    "describe_plan": "meldkit.plan.summary",
    "plan_merge": "meldkit.api",
    "load_config": "meldkit.api",
    "MergeConfig": "meldkit.config",
    "MergePlan": "meldkit.plan",
    "PlanOptions": "meldkit.plan",
    "MeldError": "meldkit.errors",
    "MeldWarning": "meldkit.errors",
    "OptionError": "meldkit.errors",
    "RecipeError": "meldkit.errors",
    "InputError": "meldkit.errors",
    "PlanError": "meldkit.errors",
    "OutputError": "meldkit.errors",
    "MergeRuntimeError": "meldkit.errors",
    # In-memory and raw-checkpoint merges, multi-stage recipes.
    "merge_state_dicts": "meldkit.api",
    "prepare_state_dict_merge": "meldkit.api",
    "merge_raw": "meldkit.api",
    "run_multi": "meldkit.api",
    # The side tools' entry points (each imports torch only when it runs).
    "plan_moe": "meldkit.moe",
    "run_moe": "meldkit.moe",
    "extract_lora": "meldkit.extract_lora",
    "transplant_tokenizer": "meldkit.tokensurgeon",
    "run_evolve": "meldkit.evolve",
}

__all__ = [
    "InputError",
    "MeldError",
    "MeldWarning",
    "MergeConfig",
    "MergePlan",
    "MergeRuntimeError",
    "OptionError",
    "OutputError",
    "PlanError",
    "PlanOptions",
    "RecipeError",
    "__version__",
    "describe_plan",
    "extract_lora",
    "load_config",
    "merge_raw",
    "merge_state_dicts",
    "plan_merge",
    "plan_moe",
    "prepare_state_dict_merge",
    "run_evolve",
    "run_merge",
    "run_moe",
    "run_multi",
    "transplant_tokenizer",
]

if _typing.TYPE_CHECKING:
    from meldkit.api import (
        load_config,
        merge_raw,
        merge_state_dicts,
        plan_merge,
        prepare_state_dict_merge,
        run_merge,
        run_multi,
    )
    from meldkit.config import MergeConfig
    from meldkit.errors import (
        InputError,
        MeldError,
        MeldWarning,
        MergeRuntimeError,
        OptionError,
        OutputError,
        PlanError,
        RecipeError,
    )
    from meldkit.evolve import run_evolve
    from meldkit.extract_lora import extract_lora
    from meldkit.moe import plan_moe, run_moe
    from meldkit.plan import MergePlan, PlanOptions
    from meldkit.plan.summary import describe_plan
    from meldkit.tokensurgeon import transplant_tokenizer

# `from __future__ import annotations` binds the name `annotations`; the API does not have it.
del annotations


def __getattr__(name: str) -> object:
    """Import an API name on first use (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'meldkit' has no attribute '{name}'")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The API and nothing else: what ``__all__`` lists."""
    return sorted(__all__)
