"""Running a multi-stage recipe: plan the whole chain, then run the stages in order.

Each stage is run by the engine (:func:`meldkit.execute.runner.execute_plan`), so each keeps
its promises: atomic output, bounded memory, ``--resume`` inside the stage. An intermediate
goes to ``DIR/<name>`` with its cache record beside it; a cached one is reused; a streamed one
(``--no-intermediates``) is never written, its tensors being merged as the stages that read
it ask for them. A stage that reads an intermediate made during this run is planned again
against the real folder (it was planned against the skeleton), which re-checks it.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from meldkit.execute.output import check_output_folder
from meldkit.execute.policy import policy_from_environment
from meldkit.execute.runner import RunOptions, execute_plan
from meldkit.multi import cache
from meldkit.multi.chain import ChainOptions, ChainPlan, StagePlan, plan_chain, plan_stage
from meldkit.multi.pacing import Pacer
from meldkit.multi.stream import StreamedStage, attach
from meldkit.plan.types import MergePlan

__all__ = ["ChainResult", "run_chain"]


@dataclass
class ChainResult:
    """What a run did: the stages it merged and wrote, those it reused from the cache, those
    it streamed (with how many tensors each merged), and the final output folder."""

    out: Path
    executed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    streamed: dict[str, int] = field(default_factory=dict)


def _ignore(message: str) -> None:
    pass


def run_chain(
    recipe: str | Path,
    options: ChainOptions,
    run: RunOptions | None = None,
    on_warning: Callable[[str], None] | None = None,
    on_info: Callable[[str], None] | None = None,
) -> ChainResult:
    """Plan and run the multi-stage recipe file ``recipe``; the final stage goes to
    ``options.out``. Every stage is planned (and every problem reported) before any runs."""
    if options.out is None:
        raise ValueError("options.out: the final stage needs an output folder")
    run = run or RunOptions()
    warn, info = on_warning or _ignore, on_info or _ignore
    options.intermediate_dir.mkdir(parents=True, exist_ok=True)
    skeletons = Path(tempfile.mkdtemp(prefix=".meldkit-skeletons-", dir=options.intermediate_dir))
    streams: dict[Path, StreamedStage] = {}
    try:
        chain = plan_chain(recipe, options, skeletons)
        for w in chain.warnings:
            warn(w)
        final = chain.stages[-1]
        # Before any stage runs. The intermediates count as inputs, so --out can neither be one
        # of them nor hold the intermediate folder (publishing would replace them).
        inputs = [
            m.folder for m in final.plan.models.values() if m.folder.parent != chain.skeletons
        ]
        inputs += [sp.output for sp in chain.stages if sp.stage.name is not None]
        check_output_folder(options.out, inputs, run.overwrite)
        result = ChainResult(options.out)
        for sp in chain.stages:
            _run_stage(sp, chain, run, streams, result, warn, info)
        for folder, stream in streams.items():
            result.streamed[folder.name] = stream.computed
        return result
    finally:
        for stream in streams.values():
            stream.close()
        shutil.rmtree(skeletons, ignore_errors=True)


def _current_plan(sp: StagePlan, chain: ChainPlan, written: set[str]) -> MergePlan:
    """``sp``'s plan, made again when an intermediate it reads was written in this run."""
    if not any(n in written for n in sp.stage.needs):
        return sp.plan
    folders = {}
    for n in sp.stage.needs:
        up = chain.stage(n)
        folders[n] = chain.skeleton(n) if up.streamed else up.output
    return plan_stage(sp.stage, folders, sp.plan.options)


def _run_stage(
    sp: StagePlan,
    chain: ChainPlan,
    run: RunOptions,
    streams: dict[Path, StreamedStage],
    result: ChainResult,
    warn: Callable[[str], None],
    info: Callable[[str], None],
) -> None:
    label = sp.stage.label
    if sp.cached:
        info(f"stage '{label}': up to date, reusing {sp.output}")
        result.cached.append(label)
        return
    plan = _current_plan(sp, chain, set(result.executed))
    policy = run.policy or policy_from_environment()
    attach(plan, streams, Pacer(policy.read_ahead(plan.elementwise)))
    if sp.streamed:
        stream = StreamedStage(plan, run.device, run.seed, policy, warn)
        streams[chain.skeleton(label)] = stream
        info(f"stage '{label}': streamed into the stages that read it (not written)")
        return
    if sp.note is not None:
        info(sp.note)
    intermediate = sp.stage.name is not None
    info(f"stage '{label}': merging into {sp.output}")
    if intermediate:
        cache.forget(sp.output)  # a crash mid-stage must not leave the old record valid
    # An intermediate is the chain's own: a stale one is replaced. The final output is the
    # user's folder: replaced only with --overwrite, as `meldkit merge` does.
    stage_run = replace(run, overwrite=intermediate or run.overwrite, policy=policy)
    execute_plan(plan, sp.output, stage_run, warn, info)
    if intermediate:
        cache.write_record(sp.output, sp.key)
    result.executed.append(label)
