"""One :class:`TensorPlan` per output tensor, from the normalised slices.

:class:`TensorBuilder` walks each module's slices in output order, finds every tensor in each
input (tied heads and fused MoE experts included), applies the method's policy for tensors
some inputs lack, checks that shapes agree, picks the dtypes and resolves the parameters.
Problems go to the shared :class:`ProblemLog`; :func:`~meldkit.plan.plan_merge` raises them.
"""

from __future__ import annotations

from typing import Any

from meldkit.config.params import layer_depth
from meldkit.config.schema import MergeConfig
from meldkit.io.dtypes import parse_dtype_name, promote
from meldkit.io.header import DTYPE_SIZES, TensorInfo
from meldkit.methods.registry import MethodSpec
from meldkit.plan.architecture import ModelLayout, tied_head_name
from meldkit.plan.models import InputModelInfo, input_warnings
from meldkit.plan.modifiers import resolve_modifiers
from meldkit.plan.moe import FusedExperts, fuse_expert_suffixes
from meldkit.plan.parameters import ProblemLog, resolve_tensor_parameters
from meldkit.plan.slices import PlannedSlice, SliceSource
from meldkit.plan.types import PlanOptions, TensorPlan, TensorSource

__all__ = ["TensorBuilder"]


def _label(model: str, base: str | None) -> str:
    return f"base model {model}" if model == base else f"model {model}"


class TensorBuilder:
    """Walks the normalised slices and emits one TensorPlan per output tensor."""

    def __init__(
        self,
        config: MergeConfig,
        method: MethodSpec,
        models: dict[str, InputModelInfo],
        options: PlanOptions,
        log: ProblemLog,
    ) -> None:
        self.config, self.method, self.models, self.options, self.log = (
            config,
            method,
            models,
            options,
            log,
        )
        self.tensors: list[TensorPlan] = []
        self.seen: set[str] = set()
        self.norm_modes: set[str] = set()  # the norm_match targets the tensors ask for
        self.load_dtype = parse_dtype_name(config.dtype) if config.dtype else None
        self.out_dtype = parse_dtype_name(config.out_dtype) if config.out_dtype else None

    # -- contracts ------------------------------------------------------------------------
    def check_contract(self, sl: PlannedSlice) -> None:
        """Log a problem where the slice's inputs break the method's contract: a required or
        forbidden base model, or the number of inputs (with and without the base)."""
        m, n = self.method, len(sl.sources)
        where = sl.where
        has_base = sl.base_index is not None
        non_base = n - (1 if has_base else 0)
        if m.base == "required" and sl.base is None:
            self.log.problem(
                ("nobase", where), f"{m.name} needs a base model; add `base_model:` to the recipe"
            )
        elif m.base == "required" and not has_base:
            self.log.problem(
                ("baseslice", where),
                f"{where}: the base model {sl.base} is not among the slice's sources; add it with the same layer_range",
            )
        if m.base == "forbidden" and sl.base is not None:
            self.log.problem(
                ("forbidbase", where), f"{m.name} takes no base model; remove `base_model:`"
            )
        if n < m.min_inputs or (m.max_inputs is not None and n > m.max_inputs):
            want = (
                f"exactly {m.min_inputs}"
                if m.max_inputs == m.min_inputs
                else (
                    f"at least {m.min_inputs}"
                    if m.max_inputs is None
                    else f"{m.min_inputs} to {m.max_inputs}"
                )
            )
            extra = " (the base model counts as an input)" if has_base else ""
            self.log.problem(
                ("count", where), f"{where}: {m.name} takes {want} input models, got {n}{extra}"
            )
        if non_base < m.min_non_base or (m.max_non_base is not None and non_base > m.max_non_base):
            want = (
                f"exactly {m.min_non_base}"
                if m.max_non_base == m.min_non_base
                else (
                    f"at least {m.min_non_base}"
                    if m.max_non_base is None
                    else f"{m.min_non_base} to {m.max_non_base}"
                )
            )
            self.log.problem(
                ("nbcount", where),
                f"{where}: {m.name} takes {want} models besides the base, got {non_base}",
            )

    # -- tensors --------------------------------------------------------------------------
    def plan_all(self, slices: list[PlannedSlice]) -> None:
        """Each module in turn: non-layer "pre" tensors from its first slice, its layers
        renumbered slice after slice, then "post" tensors from its last slice."""
        for key, message in input_warnings(self.models):  # found when the inputs were opened
            self.log.warn(key, message)
        modules: dict[str, list[PlannedSlice]] = {}
        for sl in slices:
            modules.setdefault(sl.module_where, []).append(sl)
        for group in modules.values():
            first, last = group[0], group[-1]
            # LiNeS' depth runs over the module's whole output stack, not slice by slice.
            layers = sum(sl.length for sl in group)
            for name in self._non_layer_names(first, "pre"):
                self._plan_tensor(name, first, [name] * len(first.sources), t=0.0, depth=0.0)
            offset = 0
            for sl in group:
                ref = sl.layouts[sl.sources[sl.base_index or 0].model]
                for j in range(sl.length):
                    t = layer_depth(j, sl.length)
                    depth = layer_depth(offset + j, layers)
                    ref_layer = sl.sources[sl.base_index or 0].start + j
                    items, renames = fuse_expert_suffixes(ref.layer_suffixes.get(ref_layer, []))
                    for item in items:
                        if isinstance(item, FusedExperts):
                            out_name = f"{ref.stack_prefix}{offset + j}.{item.suffix}"
                            self._plan_tensor(
                                out_name, sl, [], t, depth, item, [s.start + j for s in sl.sources]
                            )
                            continue
                        out_name = f"{ref.stack_prefix}{offset + j}.{renames.get(item, item)}"
                        names = [
                            sl.layouts[s.model].layer_tensor(s.start + j, item) for s in sl.sources
                        ]
                        self._plan_tensor(out_name, sl, names, t, depth)
                offset += sl.length
            for name in self._non_layer_names(last, "post"):
                self._plan_tensor(name, last, [name] * len(last.sources), t=0.0, depth=1.0)

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

    def _find(
        self, src: SliceSource, layout: ModelLayout, name: str
    ) -> tuple[str, TensorInfo] | None:
        model = self.models[src.model]
        info = model.index.tensors.get(name)
        if info is not None:
            return name, info
        # An input without its own head contributes its (tied) input embedding.
        if name == tied_head_name(layout) and layout.output_head is None and layout.input_embedding:
            return layout.input_embedding, model.index.tensors[layout.input_embedding]
        return None

    def _find_fused(
        self, src: SliceSource, layout: ModelLayout, layer: int, fused: FusedExperts
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

    def _plan_tensor(
        self,
        out_name: str,
        sl: PlannedSlice,
        names: list[str],
        t: float,
        depth: float,
        fused: FusedExperts | None = None,
        layers: list[int] | None = None,
    ) -> None:
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
        out_dtype = (
            (self.out_dtype or self.load_dtype or promote(in_dtypes)) if is_float else in_dtypes[0]
        )
        work = "F64" if "F64" in (*in_dtypes, self.load_dtype) else "F32"
        shared_scopes = [sl.parameters, sl.module_parameters, self.config.parameters]
        shared, per_input = resolve_tensor_parameters(
            self.method,
            out_name=out_name,
            source_names=src_names,
            source_scopes=[s.parameters for s in sources],
            source_labels=[_label(s.model, sl.base) for s in sources],
            shared_scopes=shared_scopes,
            base_index=base_index,
            t=t,
            log=self.log,
        )
        mods = resolve_modifiers(
            self.method, out_name, shared_scopes, depth, base_index is not None, self.log
        )
        if mods.norm_match is not None and is_float:
            self.norm_modes.add(mods.norm_match)
        vocab_axis = (
            0
            if any(
                n in self.models[s.model].layout.vocab_tensors for s, n in zip(sources, src_names)
            )
            else None
        )
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
                sources=tuple(
                    TensorSource(s.model, n, i, parts.get(k, ()))
                    for k, s, n, i in zip(keep, sources, src_names, infos)
                ),
                base_index=base_index,
                shared=shared,
                per_input=per_input,
                load_dtype=self.load_dtype if is_float else None,
                work_dtype=work,
                copy=copy_bytes or (not is_float and len(sources) == 1),
                vocab_axis=vocab_axis,
                integer=not is_float,
                lines_scale=mods.lines_scale if is_float else None,
                norm_match=mods.norm_match is not None and is_float,
            )
        )

    def _handle_missing(
        self, out_name: str, sl: PlannedSlice, found: list[Any], keep: list[int]
    ) -> bool:
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
            self.log.warn(
                ("skip", out_name),
                f"tensor {out_name} is missing from {', '.join(missing)}; {self.method.name} needs it in 3 inputs, so it is not written",
            )
            return False
        if self.method.base == "required" and sl.base_index not in keep:
            self.log.problem(
                ("missing-base", out_name),
                f"tensor {out_name} is missing from the base model {missing[0]}",
            )
            return False
        self.log.problem(
            ("missing", out_name),
            f"tensor {out_name} is missing from {', '.join(missing)} (present in {', '.join(present)})",
        )
        return False

    def _agree_shape(
        self, out_name: str, sources: list[SliceSource], infos: list[TensorInfo]
    ) -> tuple[int, ...] | None:
        shapes = [i.shape for i in infos]
        if len(set(shapes)) == 1:
            return shapes[0]
        vocab = any(
            i.name in self.models[s.model].layout.vocab_tensors for s, i in zip(sources, infos)
        )
        same_tail = len({s[1:] for s in shapes}) == 1 and len({len(s) for s in shapes}) == 1
        desc = ", ".join(f"{s.model} {list(sh)}" for s, sh in zip(sources, shapes))
        if vocab and same_tail:
            if self.config.tokenizer is not None:
                return (
                    max(s[0] for s in shapes),
                    *shapes[0][1:],
                )  # re-indexed by the tokenizer step
            if self.options.unsafe_truncate_embeddings:
                self.log.warn(
                    ("trunc", out_name),
                    f"{out_name}: truncating the vocabulary to {min(s[0] for s in shapes)} rows (--unsafe-truncate-embeddings)",
                )
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
