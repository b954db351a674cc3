"""Planning a merge of raw checkpoints: a plan for every tensor name, from headers only.

A raw checkpoint is a flat ``{name: tensor}`` dict with no config.json, so a recipe over raw
inputs takes the ``models:`` form. Every tensor is planned by the planner's own
:class:`~meldkit.plan.tensor_plans.TensorBuilder` (shapes, dtypes, the method's contract,
parameters resolved per tensor name), over the tensor names of the inputs rather than over an
architecture: a name with a layer index (``model.layers.3.mlp.up_proj.weight``) sits at depth
``3 / (layers - 1)`` for gradients, as in a model folder; any other name at depth 0.

Inputs that do not share every name are an error, each missing tensor reported at once,
unless ``missing`` says otherwise: ``"intersection"`` plans only the names every input has,
``"union"`` every name, merged from the inputs that have it (copied as it is when one does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal

from meldkit.config.params import layer_depth
from meldkit.config.schema import MergeConfig
from meldkit.errors import PlanError
from meldkit.io.header import TensorInfo
from meldkit.io.writer import OutputTensorSpec, plan_shards
from meldkit.methods.modifiers import with_modifier_params
from meldkit.methods.registry import get_method
from meldkit.plan.architecture import ModelLayout, split_layer_name
from meldkit.plan.models import InputModelInfo
from meldkit.plan.modifiers import finish_norm_match
from meldkit.plan.parameters import (
    ParamScope,
    ProblemLog,
    filter_warnings,
    unknown_parameter_warnings,
)
from meldkit.plan.slices import PlannedSlice, SliceSource, normalise_slices
from meldkit.plan.tensor_plans import TensorBuilder
from meldkit.plan.types import MergePlan, PlanOptions, TensorPlan
from meldkit.raw.sources import raw_input

__all__ = ["MissingTensors", "MISSING_CHOICES", "recipe_problems", "plan_raw"]

MissingTensors = Literal["error", "intersection", "union"]
MISSING_CHOICES: tuple[str, ...] = ("error", "intersection", "union")
_MISSING_HINT = (
    "merge only the tensors every input has (--tensor-intersection), or every tensor from the "
    "inputs that have it (--tensor-union)"
)


def recipe_problems(config: MergeConfig) -> list[str]:
    """What a raw merge cannot do with ``config``: layer selection and tokenizers need a
    model folder (a config to count layers by, tokenizer files)."""
    problems = []
    if config.slices is not None or config.modules is not None:
        key = "slices" if config.slices is not None else "modules"
        problems.append(
            f"`{key}:` is not supported for raw checkpoints: list the inputs under `models:` "
            "(a raw file has no config.json to select layers or modules by)"
        )
    if config.tokenizer is not None:
        problems.append(
            "`tokenizer:`/`tokenizer_source:` is not supported for raw checkpoints: a raw file "
            "has no tokenizer; remove the key"
        )
    if config.chat_template is not None:
        problems.append("`chat_template:` is not supported for raw checkpoints; remove the key")
    return problems


class _RawTensorBuilder(TensorBuilder):
    """The planner's TensorBuilder, taking a raw input's tensors as they are (no tied-head
    stand-in: a state dict without ``lm_head.weight`` has none) and, for ``union``, merging a
    tensor from the inputs that have it."""

    def __init__(self, *args: Any, union: bool) -> None:
        super().__init__(*args)
        self.union = union

    def _find(
        self, src: SliceSource, layout: ModelLayout, name: str
    ) -> tuple[str, TensorInfo] | None:
        info = self.models[src.model].index.tensors.get(name)
        return None if info is None else (name, info)

    def _handle_missing(
        self, out_name: str, sl: PlannedSlice, found: list[Any], keep: list[int]
    ) -> bool:
        """Under ``union``, a tensor some inputs lack is planned from the others (a method
        needing a base still needs it there when several inputs have the tensor)."""
        if not self.union or not keep:
            return super()._handle_missing(out_name, sl, found, keep)
        if self.method.base == "required" and sl.base_index not in keep and len(keep) > 1:
            return super()._handle_missing(out_name, sl, found, keep)
        return True

    def plan_names(self, sl: PlannedSlice, names: Sequence[str]) -> None:
        """One TensorPlan per name, at its depth in the stack of the slice's reference model."""
        ref = sl.layouts[sl.sources[sl.base_index or 0].model]
        for name in names:
            parsed = split_layer_name(name)
            in_stack = parsed is not None and parsed.prefix == ref.stack_prefix
            t = layer_depth(parsed.index, sl.length) if parsed and in_stack else 0.0
            before = len(self.tensors)
            # LiNeS' depth is the layer's place in the stack; a raw file does not say which
            # other tensors come before the stack or after it, so they take depth 0.
            self._plan_tensor(name, sl, [name] * len(sl.sources), t, depth=t)
            if self.union and len(self.tensors) > before and len(self.tensors[-1].sources) == 1:
                self.tensors[-1] = _copied(self.tensors[-1])


def _copied(tensor: TensorPlan) -> TensorPlan:
    """A tensor only one input has, in a union: its bytes as they are (its own dtype)."""
    src = tensor.sources[0]
    return replace(tensor, out_dtype=src.info.dtype, base_index=None, copy=True, load_dtype=None)


def _names_to_plan(models: dict[str, InputModelInfo], missing: str, log: ProblemLog) -> list[str]:
    """Every tensor name in order (the first input's, then names only later inputs have);
    with ``missing="error"`` each name some inputs lack is a problem."""
    names: dict[str, None] = {}
    for info in models.values():
        names.update(dict.fromkeys(info.index.tensors))
    if missing == "union":
        return list(names)
    common = [n for n in names if all(n in m.index.tensors for m in models.values())]
    if missing == "error":
        for name in names:
            lacking = [k for k, m in models.items() if name not in m.index.tensors]
            if lacking:
                present = [k for k in models if k not in lacking]
                log.problem(
                    ("missing", name),
                    f"tensor {name} is missing from {', '.join(lacking)} "
                    f"(present in {', '.join(present)})",
                )
    return common


def _restricted(info: InputModelInfo, names: Sequence[str]) -> InputModelInfo:
    tensors = {n: info.index.tensors[n] for n in names}
    return raw_input(info.key, info.ref, info.index.path, tensors)


def _scopes(config: MergeConfig, models: list[str]) -> list[ParamScope]:
    scopes = []
    if config.parameters:
        scopes.append(ParamScope("parameters", config.parameters, tuple(models)))
    for i, m in enumerate(config.models or ()):
        if m.parameters:
            where = f"models[{i}].parameters"
            scopes.append(ParamScope(where, m.parameters, (str(m.model),), per_model=True))
    return scopes


def plan_raw(
    config: MergeConfig,
    models: dict[str, InputModelInfo],
    options: PlanOptions | None = None,
    missing: str = "error",
) -> MergePlan:
    """Plan ``config`` over the raw inputs ``models`` (by reference key); raises PlanError
    listing every problem found (``options.strict``: warnings too)."""
    options = options or PlanOptions()
    method = get_method(config.merge_method)
    log = ProblemLog()
    for w in config.warnings:
        log.warn(("recipe", w), w)
    unsupported = recipe_problems(config)
    for problem in unsupported:
        log.problem(("raw", problem), problem)
    names = _names_to_plan(models, missing, log)
    missing_names = bool(log.problems) and not unsupported
    if missing == "intersection":
        models = {k: _restricted(m, names) for k, m in models.items()}
    scopes = _scopes(config, list(models))
    # The modifiers' parameters (LiNeS, norm_match) are known to every method, as in recipes.
    known = with_modifier_params(method)
    unknown_parameter_warnings(known, scopes, log)
    # Missing tensors do not stop the checks of the others: every problem is reported at once.
    slices = [] if unsupported else normalise_slices(config, models, log)
    builder = _RawTensorBuilder(config, method, models, options, log, union=missing == "union")
    before = len(log.problems)
    for sl in slices:
        builder.check_contract(sl)
    if slices and len(log.problems) == before:
        builder.plan_names(slices[0], names)
        if not builder.tensors and not log.problems:
            log.problem(("empty",), "the inputs share no tensor name: nothing to merge")
    out_names = frozenset(t.name for t in builder.tensors)
    filter_warnings(known, scopes, {k: out_names for k in models}, log)
    norm_match = finish_norm_match(builder.tensors, builder.norm_modes, log)
    warnings = list(log.warnings.values())
    if log.problems:
        raise PlanError(
            list(log.problems.values()) + (warnings if options.strict else []),
            hint=_MISSING_HINT if missing_names else None,
        )
    if options.strict and warnings:
        raise PlanError(warnings, hint="fix the recipe, or drop --strict to only warn")
    specs = [OutputTensorSpec(t.name, t.out_dtype, t.shape) for t in builder.tensors]
    shards = plan_shards(specs, options.out_shard_size)
    donor = str(config.base_model) if config.base_model else next(iter(models))
    layers = slices[0].length if slices else 0
    return MergePlan(
        config,
        method,
        models,
        builder.tensors,
        donor,
        None,
        shards,
        options,
        layers,
        warnings,
        norm_match=norm_match,
    )
