"""Build a :class:`MergePlan` from a recipe, reading only tensor headers.

For every output tensor the plan fixes its name, shape and dtype, the input tensors, the base
position, the resolved parameters and its output shard. Every check runs here, and all
problems are reported together in one :class:`PlanError`; execution starts only from a plan
that has none. This module runs the steps in order; :mod:`meldkit.plan.tensor_plans` plans
the tensors themselves.
"""

from __future__ import annotations

from typing import Any

from meldkit.config.load import load_config
from meldkit.config.schema import MergeConfig, Parameters
from meldkit.errors import InputError, PlanError
from meldkit.io.writer import OutputTensorSpec, plan_shards
from meldkit.methods.registry import MethodSpec, get_method
from meldkit.plan.models import open_models
from meldkit.plan.output_config import output_config
from meldkit.plan.parameters import ProblemLog, unknown_parameter_warnings
from meldkit.plan.slices import PlannedSlice, normalise_slices
from meldkit.plan.tensor_plans import TensorBuilder
from meldkit.plan.types import MergePlan, PlanOptions, TensorPlan, TensorSource
from meldkit.plan.vocabulary import (
    check_lora_targets,
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


def plan_merge(recipe: Any, options: PlanOptions | None = None, **kwargs: Any) -> MergePlan:
    """Validate ``recipe`` against its inputs and plan every output tensor.

    ``recipe`` is a path, YAML text, a dict or a :class:`MergeConfig`. Raises
    :class:`PlanError` listing every problem found.
    """
    options = options or PlanOptions(**kwargs)
    config = load_config(recipe, strict=options.strict)
    method = get_method(config.merge_method)
    errors: list[InputError] = []
    models, problems = open_models(
        config.referenced_models(), cache_dir=options.cache_dir, errors=errors
    )
    if len(errors) == 1:
        # One broken input: its own hint ("the file is corrupt...") says more than a generic one.
        raise PlanError([errors[0].message], hint=errors[0].hint)
    if problems:
        raise PlanError(problems, hint="fix the model paths in the recipe")
    log = ProblemLog()
    for w in config.warnings:
        log.warn(("recipe", w), w)
    slices = normalise_slices(config, models, log)
    if log.problems:
        raise PlanError(list(log.problems.values()))
    donor = str(config.base_model) if config.base_model else str(config.referenced_models()[0])
    _warn_unknown_parameters(config, method, slices, log)
    builder = TensorBuilder(config, method, models, options, log)
    for sl in slices:
        builder.check_contract(sl)
    if not log.problems:
        builder.plan_all(slices)
    vocabulary = (
        plan_vocabulary(config, models, donor, builder.tensors, log) if not log.problems else None
    )
    chat_template = plan_chat_template(config, models, log)
    check_lora_targets(models, log)
    if log.problems:
        raise PlanError(list(log.problems.values()))
    warnings = list(log.warnings.values())
    if options.strict and len(warnings) > len(config.warnings):
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
    )


def _warn_unknown_parameters(
    config: MergeConfig, method: MethodSpec, slices: list[PlannedSlice], log: ProblemLog
) -> None:
    global_scopes: dict[str, Parameters] = {"parameters": config.parameters}
    source_scopes: dict[str, Parameters] = {}
    for sl in slices:
        if sl.parameters:
            global_scopes[f"{sl.where}.parameters"] = sl.parameters
        if sl.module_parameters:
            global_scopes[f"{sl.module_where}.parameters"] = sl.module_parameters
        for i, src in enumerate(sl.sources):
            if src.parameters:
                source_scopes[f"{_source_scope_label(sl, i)}.parameters"] = src.parameters
    unknown_parameter_warnings(method, global_scopes, source_scopes, log)
