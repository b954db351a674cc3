"""``merge_raw``: a recipe over raw checkpoint files, merged into one safetensors file.

The inputs are opened from their headers (:mod:`meldkit.raw.sources`) and planned
(:mod:`meldkit.raw.planning`) before anything is computed; the plan then runs on the engine
(:func:`~meldkit.execute.runner.execute_plan`: one tensor at a time, bounded memory, the
method's seeding) into a hidden work folder beside the output, whose single
``model.safetensors`` is renamed onto the output path when complete. An interrupted or failed
merge leaves the output as it was.

``out`` ending in ``.safetensors`` is the output file; any other path is a folder (created
when missing) that receives ``model.safetensors``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meldkit.config.load import load_config
from meldkit.config.modelref import ModelRef
from meldkit.errors import InputError, OptionError, OutputError, PlanError
from meldkit.plan.models import InputModelInfo
from meldkit.plan.types import MergePlan, PlanOptions
from meldkit.raw.planning import MISSING_CHOICES, plan_raw
from meldkit.raw.sources import open_raw_file

__all__ = ["output_file", "plan_raw_recipe", "merge_raw"]

# Raw merges write a single file, however large (safetensors has no size limit).
_ONE_SHARD = 1 << 62
_OUT_NAME = "model.safetensors"


def _ignore(message: str) -> None:
    pass


def output_file(out: str | os.PathLike[str]) -> Path:
    """The file a raw merge into ``out`` writes: ``out`` itself when it ends in
    ``.safetensors``, else ``out/model.safetensors``."""
    path = Path(out)
    return path if path.suffix == ".safetensors" else path / _OUT_NAME


def _open_inputs(refs: list[ModelRef], warn: Callable[[str], None]) -> dict[str, InputModelInfo]:
    models: dict[str, InputModelInfo] = {}
    problems: list[InputError] = []
    for ref in refs:
        if str(ref) in models:
            continue
        try:
            models[str(ref)] = open_raw_file(ref, warn)
        except InputError as exc:
            problems.append(exc)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise PlanError([p.message for p in problems], hint="fix the model paths in the recipe")
    return models


def plan_raw_recipe(
    recipe: Any,
    *,
    missing: str = "error",
    strict: bool = False,
    on_warning: Callable[[str], None] | None = None,
) -> MergePlan:
    """Check ``recipe`` (a path, YAML text, a dict or a MergeConfig) against the headers of
    its raw input files and plan every tensor; nothing is computed.

    ``missing``: ``"error"`` (every tensor some input lacks is reported), ``"intersection"``
    (only the tensors every input has) or ``"union"`` (every tensor, from the inputs that have
    it). Warnings found while opening the inputs go to ``on_warning``; the plan's are kept in
    ``plan.warnings``.
    """
    if missing not in MISSING_CHOICES:
        raise OptionError(
            f"missing={missing!r} is not one of {', '.join(repr(c) for c in MISSING_CHOICES)}"
        )
    config = load_config(recipe, strict=strict)
    models = _open_inputs(config.referenced_models(), on_warning or _ignore)
    return plan_raw(config, models, PlanOptions(out_shard_size=_ONE_SHARD, strict=strict), missing)


def _check_output(target: Path, plan: MergePlan, overwrite: bool) -> None:
    for info in plan.models.values():
        if target.resolve() == info.folder.resolve():
            raise OutputError(
                f"output file {target} is the input {info.key}",
                hint="choose another output path; meldkit never overwrites an input",
            )
    if target.is_dir():
        raise OutputError(f"output path {target} is a folder", hint="choose another output path")
    if target.exists() and not overwrite:
        raise OutputError(
            f"output file {target} already exists", hint="pass --overwrite to replace it"
        )


def merge_raw(
    recipe: Any,
    out: str | os.PathLike[str],
    *,
    missing: str = "error",
    strict: bool = False,
    overwrite: bool = False,
    on_warning: Callable[[str], None] | None = None,
    on_info: Callable[[str], None] | None = None,
    **run_options: Any,
) -> Path:
    """Merge the raw checkpoints ``recipe`` names into one safetensors file; returns its path.

    ``out``: a ``.safetensors`` file path, or a folder that receives ``model.safetensors``.
    ``missing``: see :func:`plan_raw_recipe`. ``run_options``: ``device``, ``threads``,
    ``seed``, ``quiet``, ``verbose``, ``policy`` (as for ``meldkit.run_merge``). The existing
    output is replaced only with ``overwrite``, and only once the new file is complete.
    """
    from meldkit.execute.runner import RunOptions, execute_plan

    warn = on_warning or _ignore
    allowed = {"device", "threads", "seed", "quiet", "verbose", "policy"}
    unknown = sorted(set(run_options) - allowed)
    if unknown:
        raise OptionError(
            f"unknown option '{unknown[0]}' for merge_raw",
            hint="merge_raw takes: "
            + ", ".join(sorted(allowed | {"missing", "strict", "overwrite"})),
        )
    plan = plan_raw_recipe(recipe, missing=missing, strict=strict, on_warning=warn)
    for message in plan.warnings:
        warn(message)
    target = output_file(out)
    _check_output(target, plan, overwrite)
    work = target.parent / f".{target.name}.meldkit-raw"
    options = RunOptions(
        copy_tokenizer=False, write_model_card=False, overwrite=True, **run_options
    )
    try:
        execute_plan(plan, work, options, warn, on_info)
        os.replace(work / _OUT_NAME, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target
