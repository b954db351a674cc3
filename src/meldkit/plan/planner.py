"""Build a :class:`MergePlan` from a recipe, reading only tensor headers.

For every output tensor the plan fixes its name, shape and dtype, the input tensors, the base
position, the resolved parameters and its output shard. Every check runs here, and all
problems are reported together in one :class:`PlanError`; execution starts only from a plan
that has none.
"""

from __future__ import annotations

from typing import Any

from meldkit.config.load import load_config
from meldkit.config.params import layer_depth
from meldkit.config.schema import MergeConfig, Parameters
from meldkit.errors import InputError, PlanError
from meldkit.io.dtypes import parse_dtype_name, promote
from meldkit.io.header import DTYPE_SIZES, TensorInfo
from meldkit.io.writer import OutputTensorSpec, plan_shards
from meldkit.methods.registry import MethodSpec, get_method
from meldkit.plan.architecture import ModelLayout, tied_head_name
from meldkit.plan.models import InputModelInfo, open_models
from meldkit.plan.moe import FusedExperts, fuse_expert_suffixes
from meldkit.plan.output_config import output_config
from meldkit.plan.parameters import (
    ProblemLog,
    resolve_tensor_parameters,
    unknown_parameter_warnings,
)
from meldkit.plan.slices import PlannedSlice, SliceSource, normalise_slices
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


def _label(model: str, base: str | None) -> str:
    return f"base model {model}" if model == base else f"model {model}"


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
    models, problems = open_models(config.referenced_models(), cache_dir=options.cache_dir, errors=errors)
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
    builder = _TensorBuilder(config, method, models, options, log)
    for sl in slices:
        builder.check_contract(sl)
    if not log.problems:
        builder.plan_all(slices)
    vocabulary = plan_vocabulary(config, models, donor, builder.tensors, log) if not log.problems else None
    chat_template = plan_chat_template(config, models, log)
    check_lora_targets(models, log)
    if log.problems:
        raise PlanError(list(log.problems.values()))
    warnings = list(log.warnings.values())
    if options.strict and len(warnings) > len(config.warnings):
        raise PlanError(warnings, hint="fix the recipe, or drop --strict to only warn")
    # Only the slices of the main decoder stack count towards the config's layer count.
    main = [sl for sl in slices if sl.layouts[sl.sources[sl.base_index or 0].model].config_layer_key is not None] or slices
    output_layers = sum(sl.length for sl in main)
    origins = [(sl.sources[sl.base_index or 0].model, sl.sources[sl.base_index or 0].start + j) for sl in main for j in range(sl.length)]
    out_config = output_config(config, models, models[donor], origins, builder.tensors)
    update_vocab_size(out_config, vocabulary)
    specs = [OutputTensorSpec(t.name, t.out_dtype, t.shape) for t in builder.tensors]
    shards = plan_shards(specs, options.out_shard_size)
    return MergePlan(config, method, models, builder.tensors, donor, out_config, shards, options, output_layers,
                     warnings, vocabulary, chat_template)


def _warn_unknown_parameters(config: MergeConfig, method: MethodSpec, slices: list[PlannedSlice], log: ProblemLog) -> None:
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


class _TensorBuilder:
    """Walks the normalised slices and emits one TensorPlan per output tensor."""

    def __init__(self, config: MergeConfig, method: MethodSpec, models: dict[str, InputModelInfo], options: PlanOptions, log: ProblemLog) -> None:
        self.config, self.method, self.models, self.options, self.log = config, method, models, options, log
        self.tensors: list[TensorPlan] = []
        self.seen: set[str] = set()
        self.load_dtype = parse_dtype_name(config.dtype) if config.dtype else None
        self.out_dtype = parse_dtype_name(config.out_dtype) if config.out_dtype else None

    # -- contracts ------------------------------------------------------------------------
    def check_contract(self, sl: PlannedSlice) -> None:
        m, n = self.method, len(sl.sources)
        where = sl.where
        has_base = sl.base_index is not None
        non_base = n - (1 if has_base else 0)
        if m.base == "required" and sl.base is None:
            self.log.problem(("nobase", where), f"{m.name} needs a base model; add `base_model:` to the recipe")
        elif m.base == "required" and not has_base:
            self.log.problem(("baseslice", where), f"{where}: the base model {sl.base} is not among the slice's sources; add it with the same layer_range")
        if m.base == "forbidden" and sl.base is not None:
            self.log.problem(("forbidbase", where), f"{m.name} takes no base model; remove `base_model:`")
        if n < m.min_inputs or (m.max_inputs is not None and n > m.max_inputs):
            want = f"exactly {m.min_inputs}" if m.max_inputs == m.min_inputs else (
                f"at least {m.min_inputs}" if m.max_inputs is None else f"{m.min_inputs} to {m.max_inputs}")
            extra = " (the base model counts as an input)" if has_base else ""
            self.log.problem(("count", where), f"{where}: {m.name} takes {want} input models, got {n}{extra}")
        if non_base < m.min_non_base or (m.max_non_base is not None and non_base > m.max_non_base):
            want = f"exactly {m.min_non_base}" if m.max_non_base == m.min_non_base else (
                f"at least {m.min_non_base}" if m.max_non_base is None else f"{m.min_non_base} to {m.max_non_base}")
            self.log.problem(("nbcount", where), f"{where}: {m.name} takes {want} models besides the base, got {non_base}")

    # -- tensors --------------------------------------------------------------------------
    def plan_all(self, slices: list[PlannedSlice]) -> None:
        """Each module in turn: non-layer "pre" tensors from its first slice, its layers
        renumbered slice after slice, then "post" tensors from its last slice."""
        modules: dict[str, list[PlannedSlice]] = {}
        for sl in slices:
            modules.setdefault(sl.module_where, []).append(sl)
        for group in modules.values():
            first, last = group[0], group[-1]
            for name in self._non_layer_names(first, "pre"):
                self._plan_tensor(name, first, [name] * len(first.sources), t=0.0)
            offset = 0
            for sl in group:
                ref = sl.layouts[sl.sources[sl.base_index or 0].model]
                for j in range(sl.length):
                    t = layer_depth(j, sl.length)
                    ref_layer = sl.sources[sl.base_index or 0].start + j
                    items, renames = fuse_expert_suffixes(ref.layer_suffixes.get(ref_layer, []))
                    for item in items:
                        if isinstance(item, FusedExperts):
                            out_name = f"{ref.stack_prefix}{offset + j}.{item.suffix}"
                            self._plan_tensor(out_name, sl, [], t, item, [s.start + j for s in sl.sources])
                            continue
                        out_name = f"{ref.stack_prefix}{offset + j}.{renames.get(item, item)}"
                        names = [sl.layouts[s.model].layer_tensor(s.start + j, item) for s in sl.sources]
                        self._plan_tensor(out_name, sl, names, t)
                offset += sl.length
            for name in self._non_layer_names(last, "post"):
                self._plan_tensor(name, last, [name] * len(last.sources), t=0.0)

    def _non_layer_names(self, sl: PlannedSlice, where: str) -> list[str]:
        names: dict[str, None] = {}
        for src in sl.sources:
            layout = sl.layouts[src.model]
            names.update(dict.fromkeys(layout.pre if where == "pre" else layout.post))
            for prefix in layout.other_stacks if where == "pre" else ():
                for tensor in self.models[src.model].index.tensors:
                    if tensor.startswith(prefix) and tensor not in names:
                        names[tensor] = None
        return list(names)

    def _find(self, src: SliceSource, layout: ModelLayout, name: str) -> tuple[str, TensorInfo] | None:
        model = self.models[src.model]
        info = model.index.tensors.get(name)
        if info is not None:
            return name, info
        # An input without its own head contributes its (tied) input embedding.
        if name == tied_head_name(layout) and layout.output_head is None and layout.input_embedding:
            return layout.input_embedding, model.index.tensors[layout.input_embedding]
        return None

    def _find_fused(self, src: SliceSource, layout: ModelLayout, layer: int, fused: FusedExperts
                    ) -> tuple[str, TensorInfo, tuple[tuple[TensorInfo, ...], ...]] | None:
        tensors = self.models[src.model].index.tensors
        groups = []
        for expert in fused.parts:
            group = tuple(tensors.get(layout.layer_tensor(layer, part)) for part in expert)
            if any(g is None for g in group):
                return None
            groups.append(tuple(g for g in group if g is not None))
        first = groups[0][0]
        rows = sum(g.shape[0] for g in groups[0])
        shape = (len(groups), rows, *first.shape[1:])
        numel = 1
        for d in shape:
            numel *= d
        name = layout.layer_tensor(layer, fused.suffix)
        info = TensorInfo(name, first.dtype, shape, first.file, 0, numel * DTYPE_SIZES[first.dtype])
        return name, info, tuple(groups)

    def _plan_tensor(self, out_name: str, sl: PlannedSlice, names: list[str], t: float,
                     fused: FusedExperts | None = None, layers: list[int] | None = None) -> None:
        if out_name in self.seen:
            return
        self.seen.add(out_name)
        parts: dict[int, tuple[tuple[TensorInfo, ...], ...]] = {}
        if fused is not None and layers is not None:
            found: list[tuple[str, TensorInfo] | None] = []
            for i, (src, layer) in enumerate(zip(sl.sources, layers)):
                hit = self._find_fused(src, sl.layouts[src.model], layer, fused)
                found.append(hit[:2] if hit else None)
                if hit:
                    parts[i] = hit[2]
        else:
            found = [self._find(src, sl.layouts[src.model], n) for src, n in zip(sl.sources, names)]
        keep = [i for i, f in enumerate(found) if f is not None]
        if len(keep) < len(found):
            if not self._handle_missing(out_name, sl, found, keep):
                return
        sources = [sl.sources[i] for i in keep]
        hits = [found[i] for i in keep]
        assert all(h is not None for h in hits)
        infos = [h[1] for h in hits if h is not None]
        src_names = [h[0] for h in hits if h is not None]
        base_index = keep.index(sl.base_index) if sl.base_index in keep else None
        shape = self._agree_shape(out_name, sources, infos)
        if shape is None:
            return
        is_float = all(i.is_float for i in infos)
        in_dtypes = [i.dtype for i in infos]
        out_dtype = (self.out_dtype or self.load_dtype or promote(in_dtypes)) if is_float else in_dtypes[0]
        work = "F64" if "F64" in (*in_dtypes, self.load_dtype) else "F32"
        shared, per_input = resolve_tensor_parameters(
            self.method,
            out_name=out_name,
            source_names=src_names,
            source_scopes=[s.parameters for s in sources],
            source_labels=[_label(s.model, sl.base) for s in sources],
            shared_scopes=[sl.parameters, sl.module_parameters, self.config.parameters],
            base_index=base_index,
            t=t,
            log=self.log,
        )
        vocab_axis = 0 if any(n in self.models[s.model].layout.vocab_tensors for s, n in zip(sources, src_names)) else None
        copy_bytes = (
            self.method.name == "passthrough"
            and per_input[0].get("scale") is None
            and out_dtype == infos[0].dtype
            and (self.load_dtype is None or self.load_dtype == infos[0].dtype)
            and self.models[sources[0].model].lora_folder is None
            and shape == infos[0].shape
        )
        self.tensors.append(
            TensorPlan(
                name=out_name,
                shape=shape,
                out_dtype=out_dtype,
                sources=tuple(TensorSource(s.model, n, i, parts.get(k, ())) for k, s, n, i in zip(keep, sources, src_names, infos)),
                base_index=base_index,
                shared=shared,
                per_input=per_input,
                load_dtype=self.load_dtype if is_float else None,
                work_dtype=work,
                copy=copy_bytes or (not is_float and len(sources) == 1),
                vocab_axis=vocab_axis,
                integer=not is_float,
            )
        )

    def _handle_missing(self, out_name: str, sl: PlannedSlice, found: list[Any], keep: list[int]) -> bool:
        """Apply the method's optional-tensor policy; False drops the tensor."""
        missing = [sl.sources[i].model for i, f in enumerate(found) if f is None]
        present = [sl.sources[i].model for i in keep]
        policy = self.method.optional_policy
        if len(keep) == 1 and policy == "passthrough_single":
            return True
        if policy == "passthrough_base" and len(keep) == 1 and keep[0] == sl.base_index:
            return True
        if policy == "need_three" and len(keep) < 3:
            if keep == [sl.base_index]:
                return True
            self.log.warn(("skip", out_name), f"tensor {out_name} is missing from {', '.join(missing)}; {self.method.name} needs it in 3 inputs, so it is not written")
            return False
        if self.method.base == "required" and sl.base_index not in keep:
            self.log.problem(("missing-base", out_name), f"tensor {out_name} is missing from the base model {missing[0]}")
            return False
        self.log.problem(
            ("missing", out_name),
            f"tensor {out_name} is missing from {', '.join(missing)} (present in {', '.join(present)})",
        )
        return False

    def _agree_shape(self, out_name: str, sources: list[SliceSource], infos: list[TensorInfo]) -> tuple[int, ...] | None:
        shapes = [i.shape for i in infos]
        if len(set(shapes)) == 1:
            return shapes[0]
        vocab = any(i.name in self.models[s.model].layout.vocab_tensors for s, i in zip(sources, infos))
        same_tail = len({s[1:] for s in shapes}) == 1 and len({len(s) for s in shapes}) == 1
        desc = ", ".join(f"{s.model} {list(sh)}" for s, sh in zip(sources, shapes))
        if vocab and same_tail:
            if self.config.tokenizer is not None:
                return (max(s[0] for s in shapes), *shapes[0][1:])  # re-indexed by the tokenizer step
            if self.options.unsafe_truncate_embeddings:
                self.log.warn(("trunc", out_name), f"{out_name}: truncating the vocabulary to {min(s[0] for s in shapes)} rows (--unsafe-truncate-embeddings)")
                return (min(s[0] for s in shapes), *shapes[0][1:])
            self.log.problem(
                ("vocab",),
                f"the models have different vocabulary sizes ({desc} for {out_name}); "
                "set `tokenizer_source: base` (keep the base vocabulary) or `tokenizer_source: union` "
                "(all tokens), or pass --unsafe-truncate-embeddings",
            )
            return None
        self.log.problem(("shape", out_name), f"tensor {out_name} has different shapes: {desc}")
        return None
