"""Build a :class:`MergePlan` from a recipe, reading only tensor headers.

For every output tensor the plan fixes its name, shape and dtype, the input tensors, the base
position, the resolved parameters and its output shard. Every check runs here, and all
problems are reported together in one :class:`PlanError`; execution starts only from a plan
that has none. This module runs the steps in order; :mod:`meldkit.plan.tensor_plans` plans
the tensors themselves.
"""

from __future__ import annotations

from typing import Any

from meldkit.config.keys import TOP_KEYS, key_warning
from meldkit.config.load import load_config
from meldkit.config.schema import MergeConfig
from meldkit.errors import InputError, PlanError
from meldkit.io.writer import OutputTensorSpec, plan_shards
from meldkit.methods.modifiers import with_modifier_params
from meldkit.methods.registry import MethodSpec, get_method
from meldkit.plan.models import InputModelInfo, open_models, recipe_folder
from meldkit.plan.modifiers import finish_norm_match
from meldkit.plan.output_config import output_config
from meldkit.plan.parameters import (
    Misplaced,
    ParamScope,
    ProblemLog,
    filter_warnings,
    unknown_parameter_warnings,
)
from meldkit.plan.slices import PlannedSlice, normalise_slices
from meldkit.plan.tensor_plans import TensorBuilder
from meldkit.plan.types import MergePlan, PlanOptions, TensorPlan, TensorSource
from meldkit.plan.vocabulary import (
    plan_chat_template,
    plan_vocabulary,
    update_vocab_size,
)

# The plan's types live in plan.types; they stay importable from here, where execution, the
# API and the model card import them.
__all__ = ["PlanOptions", "TensorSource", "TensorPlan", "MergePlan", "plan_merge"]


def _source_scope_label(sl: PlannedSlice, i: int) -> str:
    if "slices[" in sl.where:
        return f"{sl.where}.sources[{i}]"
    return f"{sl.where}[{i}]" if sl.where.endswith("models") else f"{sl.where}.models[{i}]"


def _failure(problems: list[str], warnings: list[str], hint: str | None = None) -> PlanError:
    """The PlanError for ``problems``; ``warnings`` (under --strict) join them, each once."""
    return PlanError(problems + [w for w in warnings if w not in problems], hint=hint)


def plan_merge(recipe: Any, options: PlanOptions | None = None, **kwargs: Any) -> MergePlan:
    """Validate ``recipe`` against its inputs and plan every output tensor.

    ``recipe`` is a path, YAML text, a dict or a :class:`MergeConfig`. Raises
    :class:`PlanError` listing every problem found; under ``strict`` every warning (the
    recipe's and the plan's) is one of them.
    """
    options = options or PlanOptions(**kwargs)
    # Ranges are checked below, knowing the layer counts; --strict is applied at the end, so
    # that the recipe's warnings and the plan's are reported together, each once.
    config = load_config(recipe, check_ranges=False)
    method = get_method(config.merge_method)
    strict = options.strict
    recipe_warnings = list(config.warnings) if strict else []
    errors: list[InputError] = []
    models, problems = open_models(
        config.referenced_models(),
        cache_dir=options.cache_dir,
        errors=errors,
        recipe_dir=recipe_folder(recipe),
    )
    if len(errors) == 1:
        # One broken input: its own hint ("the file is corrupt...") says more than a generic one.
        raise _failure([errors[0].message], recipe_warnings, errors[0].hint)
    if problems:
        raise _failure(problems, recipe_warnings, "fix the model paths in the recipe")
    log = ProblemLog()
    for w in config.warnings:
        log.warn(("recipe", w), w)
    slices = normalise_slices(config, models, log)
    scopes = _parameter_scopes(config, slices, list(models))
    # The modifiers' parameters (LiNeS, norm_match) are known to every method.
    known = with_modifier_params(method)
    unknown_parameter_warnings(known, scopes, log)
    _note_top_level_parameters(config, method, log)
    if log.problems:
        raise _failure(list(log.problems.values()), list(log.warnings.values()) if strict else [])
    donor = str(config.base_model) if config.base_model else str(config.referenced_models()[0])
    builder = TensorBuilder(config, method, models, options, log)
    for sl in slices:
        builder.check_contract(sl)
    if not log.problems:
        builder.plan_all(slices)
    filter_warnings(known, scopes, _tensor_names(models, builder.tensors), log)
    vocabulary = (
        plan_vocabulary(config, models, donor, builder.tensors, log) if not log.problems else None
    )
    norm_match = finish_norm_match(builder.tensors, builder.norm_modes, log)
    chat_template = plan_chat_template(config, models, log)
    if log.problems:
        raise _failure(list(log.problems.values()), list(log.warnings.values()) if strict else [])
    warnings = list(log.warnings.values())
    if strict and warnings:
        raise PlanError(warnings, hint="fix the recipe, or drop --strict to only warn")
    # Only the slices of the main decoder stack count towards the config's layer count.
    main = [
        sl
        for sl in slices
        if sl.layouts[sl.sources[sl.base_index or 0].model].config_layer_key is not None
    ] or slices
    output_layers = sum(sl.length for sl in main)
    origins = [
        (sl.sources[sl.base_index or 0].model, sl.sources[sl.base_index or 0].start + j)
        for sl in main
        for j in range(sl.length)
    ]
    out_config = output_config(config, models, models[donor], origins, builder.tensors)
    update_vocab_size(out_config, vocabulary)
    specs = [OutputTensorSpec(t.name, t.out_dtype, t.shape) for t in builder.tensors]
    shards = plan_shards(specs, options.out_shard_size)
    return MergePlan(
        config,
        method,
        models,
        builder.tensors,
        donor,
        out_config,
        shards,
        options,
        output_layers,
        warnings,
        vocabulary,
        chat_template,
        norm_match,
    )


def _parameter_scopes(
    config: MergeConfig, slices: list[PlannedSlice], all_models: list[str]
) -> list[ParamScope]:
    """Every non-empty ``parameters:`` block, named as in the recipe, with its models."""
    scopes: dict[str, ParamScope] = {}
    if config.parameters:
        scopes["parameters"] = ParamScope("parameters", config.parameters, tuple(all_models))
    for sl in slices:
        in_slice = tuple(dict.fromkeys(s.model for s in sl.sources))
        if sl.module_parameters:
            where = f"{sl.module_where}.parameters"
            old = scopes.get(where)
            joined = tuple(dict.fromkeys((*(old.models if old else ()), *in_slice)))
            scopes[where] = ParamScope(where, sl.module_parameters, joined)
        if sl.parameters:
            where = f"{sl.where}.parameters"
            scopes[where] = ParamScope(where, sl.parameters, in_slice)
        for i, src in enumerate(sl.sources):
            if src.parameters:
                where = f"{_source_scope_label(sl, i)}.parameters"
                scopes[where] = ParamScope(where, src.parameters, (src.model,), per_model=True)
    return list(scopes.values())


def _note_top_level_parameters(config: MergeConfig, method: MethodSpec, log: ProblemLog) -> None:
    """A method parameter written at the top level instead of under ``parameters:`` is ignored
    (as MergeKit does); when that leaves a required parameter missing, the error says why."""
    for key in config.ignored_top_keys:
        if method.param(key) is None:
            continue
        problem = (
            f"missing required parameter '{key}' for {method.name}; the top-level '{key}:' is "
            "ignored: put it under 'parameters:'"
        )
        warning = ("recipe", key_warning(key, TOP_KEYS))
        log.misplaced.append(Misplaced(config.parameters, key, problem, warning))


def _tensor_names(
    models: dict[str, InputModelInfo], tensors: list[TensorPlan]
) -> dict[str, frozenset[str]]:
    """Per model, the names a filter may match: its own tensors (per-input parameters filter
    on those) and the output tensors (shared ones filter on those)."""
    out_names = {t.name for t in tensors}
    return {key: frozenset(info.index.tensors) | out_names for key, info in models.items()}
