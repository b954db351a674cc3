"""Normalising ``models:`` / ``slices:`` into one list of output slices (spec section 2.4).

``models:`` becomes a single slice whose sources cover each model's whole layer stack, with the
base model appended as a source when it is not listed. Layer ranges are checked against the
models here, every source of every slice: the recipe loader leaves them to the planner, which
knows each model's layer count and so can say what the valid range is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meldkit.config.ranges import range_problem, slice_length_problem
from meldkit.config.schema import MergeConfig, ModuleConfig, OutputSlice, Parameters
from meldkit.plan.architecture import ModelLayout, infer_layout
from meldkit.plan.models import InputModelInfo
from meldkit.plan.modules import partition_modules
from meldkit.plan.parameters import ProblemLog

__all__ = ["SliceSource", "PlannedSlice", "normalise_slices"]


@dataclass(frozen=True)
class SliceSource:
    model: str  # key of InputModelInfo
    start: int
    end: int
    parameters: Parameters = field(default_factory=dict)


@dataclass
class PlannedSlice:
    where: str  # "models", "slices[2]", "modules.text.slices[0]"
    sources: list[SliceSource]
    base: str | None  # key of the slice's base model, if any
    base_index: int | None  # its position among the sources
    parameters: Parameters
    module_parameters: Parameters
    module_where: str = ""
    layouts: dict[str, ModelLayout] = field(default_factory=dict)  # per model, for this module

    @property
    def length(self) -> int:
        return self.sources[0].end - self.sources[0].start


def _check_ranges(
    sl: OutputSlice, where: str, layouts: dict[str, ModelLayout], log: ProblemLog
) -> None:
    """Check every source's layer_range against its model's layer count, then (when all fit)
    that the sources span equally many layers; every problem goes to ``log``."""
    fits = True
    for j, src in enumerate(sl.sources):
        key = str(src.model)
        sw = f"{where}.sources[{j}].layer_range"
        problem = range_problem(sw, *src.layer_range, key, layouts[key].num_layers)
        if problem:
            log.problem(("range", sw), problem)
            fits = False
    if fits:
        problem = slice_length_problem(where, [(str(s.model), *s.layer_range) for s in sl.sources])
        if problem:
            log.problem(("lengths", where), problem)


def _module_slices(
    config: MergeConfig,
    module: ModuleConfig,
    where: str,
    models: dict[str, InputModelInfo],
    layouts: dict[str, ModelLayout],
    log: ProblemLog,
) -> list[PlannedSlice]:
    out: list[PlannedSlice] = []
    base = str(config.base_model) if config.base_model else None
    if module.models is not None:
        sources = [
            SliceSource(str(m.model), 0, layouts[str(m.model)].num_layers, m.parameters)
            for m in module.models
        ]
        if base is not None and base not in [s.model for s in sources]:
            sources.append(SliceSource(base, 0, layouts[base].num_layers))
        lengths = {s.end for s in sources}
        if len(lengths) > 1:
            desc = ", ".join(f"{s.model} ({s.end} layers)" for s in sources)
            log.problem(
                ("layers", where),
                f"the models have different numbers of layers: {desc}",
            )
            return []
        base_index = next((i for i, s in enumerate(sources) if s.model == base), None)
        out.append(
            PlannedSlice(
                where or "models", sources, base, base_index, {}, module.parameters, where, layouts
            )
        )
        return out
    for i, sl in enumerate(module.slices or ()):
        sw = f"{where + '.' if where else ''}slices[{i}]"
        sbase = str(sl.base_model) if sl.base_model else base
        _check_ranges(sl, sw, layouts, log)
        sources = [SliceSource(str(s.model), *s.layer_range, s.parameters) for s in sl.sources]
        base_index = next((k for k, s in enumerate(sources) if s.model == sbase), None)
        out.append(
            PlannedSlice(
                sw, sources, sbase, base_index, sl.parameters, module.parameters, where, layouts
            )
        )
    return out


def _module_layouts(
    config: MergeConfig, models: dict[str, InputModelInfo], log: ProblemLog
) -> dict[str, dict[str, ModelLayout]]:
    """Per module, per model: the layout of the tensors that belong to that module."""
    assert config.modules is not None
    names = list(config.modules)
    result: dict[str, dict[str, ModelLayout]] = {m: {} for m in names}
    for key, info in models.items():
        parts, unclaimed = partition_modules(names, info.index.tensors)
        for module, tensors in parts.items():
            if not tensors and key in {
                str(r) for r in _module_refs(config.modules[module], config)
            }:
                log.problem(
                    ("nomodule", module, key),
                    f"modules.{module}: no tensor of {key} belongs to module '{module}'",
                )
            # Only the module holding the model's main stack owns the config's layer count.
            layout = infer_layout(tensors, info.config)
            if layout.stack_prefix != info.layout.stack_prefix:
                layout.config_layer_key, layout.config_layers = None, None
            result[module][key] = layout
        if unclaimed:
            log.warn(
                ("unclaimed", key),
                f"{len(unclaimed)} tensors of {key} belong to no module of the recipe "
                f"and are not written (e.g. {unclaimed[0]})",
            )
    return result


def _module_refs(module: ModuleConfig, config: MergeConfig) -> list[object]:
    refs: list[object] = [m.model for m in module.models or ()]
    refs += [s.model for sl in module.slices or () for s in sl.sources]
    return refs


def normalise_slices(
    config: MergeConfig, models: dict[str, InputModelInfo], log: ProblemLog
) -> list[PlannedSlice]:
    """The recipe's output slices, in output order; problems go to ``log``."""
    if config.modules is not None:
        per_module = _module_layouts(config, models, log)
        out: list[PlannedSlice] = []
        for name, module in config.modules.items():
            out += _module_slices(config, module, f"modules.{name}", models, per_module[name], log)
        return out
    module = config.all_modules()[""]
    if module.slices is not None:
        for key in sorted({str(src.model) for sl in module.slices for src in sl.sources}):
            info = models[key]
            if info.layout.other_stacks:
                log.problem(
                    ("stacks", key),
                    f"{key} has several layer stacks ({', '.join(sorted([str(info.layout.stack_prefix), *info.layout.other_stacks]))}); "
                    "`slices:` needs a single-stack model; use `modules:` to select per module",
                )
    layouts = {key: info.layout for key, info in models.items()}
    return _module_slices(config, module, "", models, layouts, log)
