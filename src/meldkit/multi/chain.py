"""Planning a whole multi-stage recipe before any stage runs.

Every stage is checked against the recipe schema first (all stages, all problems together),
then planned in order: a stage that reads an earlier stage's output is planned against that
output when it is cached, and otherwise against its skeleton (:mod:`meldkit.multi.skeleton`),
made from the earlier stage's plan. So every stage is validated (names, graph, schema, headers,
shapes, parameters) before anything is computed, and ``meldkit plan`` shows the whole chain.
With ``stream`` (``--no-intermediates``), the intermediates that can be streamed into the
stages that read them are marked so (:func:`choose_streaming`).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from meldkit.config.load import parse_config
from meldkit.errors import MeldError, PlanError
from meldkit.methods.registry import get_method
from meldkit.multi import cache
from meldkit.multi.skeleton import write_skeleton
from meldkit.multi.stages import Stage, StageGraph, parse_stages, resolve_stage
from meldkit.plan.planner import plan_merge
from meldkit.plan.types import MergePlan, PlanOptions, TensorSource

_MANY_HINT = "fix the stage each problem names"

__all__ = ["ChainOptions", "StagePlan", "ChainPlan", "plan_chain", "plan_stage", "read_counts"]


@dataclass(frozen=True)
class ChainOptions:
    """What decides a chain's plan: where the intermediates go, the final output, the plan
    options every stage shares, whether cached intermediates are reused (``lazy``) and whether
    intermediates are streamed (``stream``); ``run`` holds the run settings that change an
    output's bytes (seed, device kind, tokenizer and card), part of each cache key."""

    intermediate_dir: Path
    out: Path | None = None
    plan: PlanOptions = field(default_factory=PlanOptions)
    lazy: bool = True
    stream: bool = False
    run: dict[str, Any] = field(default_factory=dict)


@dataclass
class StagePlan:
    """One stage of the chain: its plan, cache key, output folder and how it will be run."""

    stage: Stage
    plan: MergePlan
    key: str
    output: Path
    cached: bool = False
    streamed: bool = False
    note: str | None = None  # why an intermediate is written although streaming was asked


@dataclass
class ChainPlan:
    """Every stage's plan, in the order they run; ``skeletons`` holds the skeleton folders of
    the intermediates not yet made (the caller owns and removes it)."""

    graph: StageGraph
    stages: list[StagePlan]
    skeletons: Path
    warnings: list[str] = field(default_factory=list)

    def stage(self, name: str) -> StagePlan:
        return next(sp for sp in self.stages if sp.stage.name == name)

    def skeleton(self, name: str) -> Path:
        return self.skeletons / name

    def labels(self) -> dict[str, str]:
        """Folder paths (as the plans' model keys show them) -> the stage names they stand for."""
        found: dict[str, str] = {}
        for sp in self.stages:
            if sp.stage.name is not None:
                found[str(self.skeleton(sp.stage.name))] = sp.stage.name
                found[str(sp.output)] = sp.stage.name
        return found


def _prefixed(stage: Stage, exc: MeldError) -> list[str]:
    problems = getattr(exc, "problems", None) or [exc.message]
    return [f"stage '{stage.label}': {p}" for p in problems]


def _check_schemas(graph: StageGraph, folders: dict[str, Path]) -> None:
    """Every stage's recipe against the schema, and its method, all problems reported
    together (a later stage is planned only once the stages it reads are)."""
    problems: list[str] = []
    hints: list[str | None] = []
    for stage in graph.stages:
        try:
            config = parse_config(resolve_stage(stage, folders), check_ranges=False)
            get_method(config.merge_method)
        except MeldError as exc:
            problems.extend(_prefixed(stage, exc))
            hints.append(exc.hint)
    if problems:
        hint = hints[0] if len(hints) == 1 else _MANY_HINT
        raise PlanError(problems, hint=hint)


def plan_stage(stage: Stage, folders: Mapping[str, Path], options: PlanOptions) -> MergePlan:
    """Plan ``stage`` with the stages it reads at ``folders``. The recipe the output folder
    records (mergekit_config.yml) is the stage's own document, stage names and all, not its
    resolution to folders that may be temporary."""
    plan = plan_merge(resolve_stage(stage, folders), options)
    document = {"name": stage.name, **stage.data} if stage.name is not None else stage.data
    text = yaml.safe_dump(document, sort_keys=False)
    plan.config = dataclasses.replace(plan.config, source_text=text)
    return plan


def _outputs(graph: StageGraph, options: ChainOptions) -> dict[str, Path]:
    folder = options.intermediate_dir.resolve()
    return {s.name: folder / s.name for s in graph.stages if s.name is not None}


def plan_chain(
    recipe: str | Path,
    options: ChainOptions,
    skeletons: Path,
) -> ChainPlan:
    """Plan every stage of the multi-stage recipe file ``recipe``; raises :class:`PlanError`
    with every problem of every stage. ``skeletons`` is an empty folder for the skeletons."""
    path = Path(recipe)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanError([f"cannot read recipe '{recipe}': {exc}"]) from None
    graph = parse_stages(text, str(recipe))
    outputs = _outputs(graph, options)
    _check_schemas(graph, outputs)
    skeletons = skeletons.resolve()
    chain = ChainPlan(graph, [], skeletons)
    problems: list[str] = []
    hints: list[str | None] = []
    usable: dict[str, Path] = {}  # stage name -> the folder later stages are planned against
    keys: dict[str, str] = {}
    for stage in graph.stages:
        if any(n not in usable for n in stage.needs):
            continue  # an earlier stage it reads has problems, reported already
        try:
            plan = plan_stage(stage, usable, options.plan)
        except MeldError as exc:
            problems.extend(_prefixed(stage, exc))
            hints.append(exc.hint)
            continue
        chain.warnings.extend(f"stage '{stage.label}': {w}" for w in plan.warnings)
        read_folders = {usable[n].resolve() for n in stage.needs}
        upstream = {n: keys[n] for n in stage.needs}
        key = cache.stage_key(stage.data, plan, upstream, read_folders, options.run)
        output = outputs[stage.name] if stage.name is not None else _final_output(options)
        cached = stage.name is not None and options.lazy and cache.is_cached(output, key)
        chain.stages.append(StagePlan(stage, plan, key, output, cached))
        if stage.name is not None:
            keys[stage.name] = key
            usable[stage.name] = output if cached else chain.skeleton(stage.name)
            if not cached:
                write_skeleton(plan, chain.skeleton(stage.name), chain.warnings.append)
    if problems:
        raise PlanError(problems, hint=hints[0] if len(hints) == 1 else _MANY_HINT)
    if options.stream:
        choose_streaming(chain)
    return chain


def _final_output(options: ChainOptions) -> Path:
    return options.out.resolve() if options.out is not None else Path("<out>")


def _infos(source: TensorSource) -> Iterator[Any]:
    if source.parts:
        for group in source.parts:
            yield from group
    else:
        yield source.info


def read_counts(plan: MergePlan, folder: Path) -> Counter[str]:
    """How often ``plan`` reads each tensor of the checkpoint in ``folder``."""
    counts: Counter[str] = Counter()
    for t in plan.tensors:
        for s in t.sources:
            for info in _infos(s):
                if info.file.parent == folder:
                    counts[info.name] += 1
    return counts


def choose_streaming(chain: ChainPlan) -> None:
    """Mark each intermediate that can be streamed into its readers, and note why the others
    are written. An intermediate is streamed when later stages read each of its tensors at most
    once in all (a tensor read twice, as a frankenmerge repeating layers does, would be merged
    twice); it is written when no later stage reads it (then it is an output in its own
    right) or when it is cached already (reading it is cheaper than merging it again)."""
    for sp in chain.stages:
        name = sp.stage.name
        if name is None or sp.cached:
            continue
        readers = [c for c in chain.stages if name in c.stage.needs]
        if not readers:
            sp.note = f"stage '{name}' is written: no later stage reads it"
            continue
        if sp.plan.norm_match is not None:
            # Its task-vector norms come from a pre-pass over its whole inputs, which a
            # tensor-by-tensor stream does not run.
            sp.note = f"stage '{name}' is written: it uses norm_match, which needs a pre-pass"
            continue
        counts: Counter[str] = Counter()
        for reader in readers:
            counts.update(read_counts(reader.plan, chain.skeleton(name)))
        tensor, times = max(counts.items(), key=lambda kv: kv[1], default=("", 0))
        if times > 1:
            sp.note = (
                f"stage '{name}' is written: later stages read its tensor {tensor} "
                f"{times} times, and streaming would merge it {times} times"
            )
            continue
        sp.streamed = True
