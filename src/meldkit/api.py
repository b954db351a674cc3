"""The Python API: ``run_merge``, ``plan_merge`` and ``load_config`` (and, from
:mod:`meldkit.raw`, ``merge_state_dicts``, ``prepare_state_dict_merge`` and ``merge_raw``),
phrased for Python callers.

The CLI calls the planner and the engine itself; what these functions add is what a Python
caller expects:

- **Warnings reach the caller.** Recipe and plan warnings (an ignored key such as ``densty:``)
  and those found while merging (NaN inputs, a resume that starts afresh) are emitted through
  Python's :mod:`warnings` as :class:`~meldkit.errors.MeldWarning`, at the caller's line;
  Python's warning filters apply (``warnings.simplefilter("error", MeldWarning)`` makes each an
  exception). An ``on_warning`` callback, when given, receives them instead. Progress notes (how
  much a resume reuses) go to the ``meldkit`` logger at INFO level.
- **Hints name keyword options**, not CLI flags: a :class:`~meldkit.errors.MeldError` that
  escapes says ``overwrite=True`` where the CLI says ``--overwrite`` (:func:`python_spelling`).
- **Unknown keyword options** raise :class:`~meldkit.errors.OptionError` naming the closest one.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from meldkit.config import MergeConfig
from meldkit.config import load_config as _load_config
from meldkit.errors import MeldError, MeldWarning, OptionError, did_you_mean
from meldkit.plan.planner import MergePlan, PlanOptions
from meldkit.plan.planner import plan_merge as _plan_merge

if TYPE_CHECKING:
    from meldkit.raw.state_dicts import StateDictMerge

__all__ = [
    "load_config",
    "merge_raw",
    "merge_state_dicts",
    "plan_merge",
    "prepare_state_dict_merge",
    "python_spelling",
    "run_merge",
    "split_options",
]

_PLAN_FIELDS = frozenset(f.name for f in dataclasses.fields(PlanOptions))
_log = logging.getLogger("meldkit")

# CLI options that take a value: flag -> (keyword, what a value after the flag looks like).
_VALUED = {
    "device": ("device", r"cpu|cuda(?::\d+)?|auto"),
    "out-shard-size": ("out_shard_size", r"\d+(?:\.\d+)?[A-Za-z]*"),
    "threads": ("threads", r"\d+"),
    "num-threads": ("threads", r"\d+"),
    "seed": ("seed", r"\d+"),
    "random-seed": ("seed", r"\d+"),
    "cache-dir": ("cache_dir", r"[~./][^\s,;)]*"),
    "transformers-cache": ("cache_dir", r"[~./][^\s,;)]*"),
}
_NUMERIC = frozenset({"threads", "seed"})
# On/off flags, named as their keyword (``--no-<flag>`` is ``<keyword>=False``).
_SWITCHES = frozenset(
    ("overwrite", "resume", "strict", "unsafe-truncate-embeddings", "quiet", "copy-tokenizer")
    + ("write-model-card",)
)
_SHORTHANDS = {
    "cuda": 'device="cuda"',
    "gpu-rich": 'device="cuda"',
    "verbose": "verbose=1",
    "tensor-intersection": 'missing="intersection"',
    "tensor-union": 'missing="union"',
}
_FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)((?:[ =][^\s,;)]+)?)")
_PHRASES = [
    (re.compile(p), r)
    for p, r in (
        # An API error lists every problem and carries its traceback: no -v or --debug for that.
        (
            r"[;,]?\s*\b(?:add|pass|use|run (?:again )?with|with) (?:-v|--verbose) to list\b[^;),]*",
            "",
        ),
        (r"[;,]?\s*\b(?:add|pass|use|run (?:again )?with|with) --debug\b[^;),]*", ""),
        # Short options that have a keyword: as their long spelling, translated below.
        (r"(?<![\w-])-v\b", "--verbose"),
        (r"(?<![\w-])-j\b", "--threads"),
        (r"\brun the same command(?: again)?", "call run_merge again"),
        (r"\bmeldkit plan\b", "meldkit.plan_merge()"),
        (r"`?\bmeldkit merge-raw\b`?", "meldkit.merge_raw()"),
        (r"\bmeldkit merge(?!-)\b", "meldkit.run_merge()"),
    )
]


def python_spelling(text: str) -> str:
    """``text`` (a hint, a message, a warning) with CLI spellings turned into the API's.

    ``--overwrite`` becomes ``overwrite=True``, ``--no-copy-tokenizer`` ``copy_tokenizer=False``,
    ``--device cuda`` ``device="cuda"``, ``--cache-dir`` ``cache_dir=...``, ``meldkit plan``
    ``meldkit.plan_merge()``, ``-v`` ``verbose=1``; advice to add ``-v`` to list every problem
    or ``--debug`` for the traceback is dropped (an API error has both). Flags the API has no
    keyword for are left as they are.
    """
    for pattern, replacement in _PHRASES:
        text = pattern.sub(replacement, text)
    return _FLAG.sub(_keyword, text)


def _keyword(match: re.Match[str]) -> str:
    flag, rest = match.group(1), match.group(2)
    if flag in _SHORTHANDS:
        return _SHORTHANDS[flag] + rest
    if flag in _VALUED:
        name, value_pattern = _VALUED[flag]
        value = rest[1:]
        if value and re.fullmatch(value_pattern, value):
            return f"{name}={value}" if name in _NUMERIC else f'{name}="{value}"'
        return f"{name}=...{rest}"
    switch = flag.removeprefix("no-")
    if switch in _SWITCHES:
        return f"{switch.replace('-', '_')}={switch == flag}{rest}"
    return match.group(0)


@contextmanager
def _api_errors() -> Iterator[None]:
    """Re-raise a MeldError (the same object, its traceback intact) phrased for the API."""
    try:
        yield
    except MeldError as exc:
        exc.respell(python_spelling)
        raise


def _warning_sink(
    on_warning: Callable[[str], None] | None, caller: FrameType
) -> Callable[[str], None]:
    """Where warnings go, API-phrased: ``on_warning`` when given, else a MeldWarning attributed
    to ``caller``, the line that called the API (whichever engine thread found the problem)."""
    if on_warning is not None:
        callback = on_warning
        return lambda message: callback(python_spelling(message))
    filename, lineno, module_globals = caller.f_code.co_filename, caller.f_lineno, caller.f_globals

    def emit(message: str) -> None:
        # What warnings.warn(stacklevel=2) does from the API function itself, from any thread.
        warnings.warn_explicit(
            python_spelling(message),
            MeldWarning,
            filename,
            lineno,
            module=module_globals.get("__name__", filename),
            registry=module_globals.setdefault("__warningregistry__", {}),
            module_globals=module_globals,
        )

    return emit


def _info(message: str) -> None:
    _log.info("%s", python_spelling(message))


def _check_names(names: Iterable[str], valid: Iterable[str], function: str) -> None:
    valid = sorted(valid)
    unknown = sorted(set(names) - set(valid))
    if not unknown:
        return
    if len(unknown) == 1:
        what = f"unknown option '{unknown[0]}' for {function}.{did_you_mean(unknown[0], valid)}"
    else:
        what = f"unknown options {', '.join(repr(n) for n in unknown)} for {function}"
    raise OptionError(what, hint=f"{function} takes: {', '.join(valid)}")


def _plan_options(options: dict[str, Any], base: PlanOptions | None = None) -> PlanOptions:
    """PlanOptions from keyword options (``out_shard_size`` may be "5GB"), over ``base``."""
    if "out_shard_size" in options:
        from meldkit.io.sizes import parse_size

        options = {**options, "out_shard_size": parse_size(options["out_shard_size"])}
    return dataclasses.replace(base or PlanOptions(), **options)


def split_options(options: dict[str, Any]) -> tuple[PlanOptions, Any]:
    """Split run_merge's keyword options into PlanOptions and RunOptions (unknown: OptionError)."""
    from meldkit.execute.runner import RunOptions

    run_fields = {f.name for f in dataclasses.fields(RunOptions)}
    _check_names(options, _PLAN_FIELDS | run_fields, "run_merge")
    plan_options = _plan_options({k: v for k, v in options.items() if k in _PLAN_FIELDS})
    return plan_options, RunOptions(**{k: v for k, v in options.items() if k in run_fields})


def load_config(source: Any, *, strict: bool = False) -> MergeConfig:
    """Load and check a recipe: a path, YAML text, a dict or a MergeConfig (returned as is).

    Recipe warnings are kept in ``config.warnings`` (:func:`plan_merge` and :func:`run_merge`
    emit them); with ``strict=True`` the first one is a RecipeError instead.
    """
    with _api_errors():
        return _load_config(source, strict=strict)


def plan_merge(
    recipe: Any,
    options: PlanOptions | None = None,
    *,
    on_warning: Callable[[str], None] | None = None,
    **kwargs: Any,
) -> MergePlan:
    """Check ``recipe`` against its inputs' headers and plan every output tensor; nothing is
    computed or written.

    ``recipe``: a path, YAML text, a dict or a MergeConfig. Options are a PlanOptions or keyword
    options (``out_shard_size`` as bytes or "5GB", ``unsafe_truncate_embeddings``, ``strict``,
    ``cache_dir``); keywords override ``options``. Each warning is emitted as a
    :class:`~meldkit.errors.MeldWarning` or, when given, passed to ``on_warning`` instead; they
    are also kept in ``plan.warnings``. Raises :class:`~meldkit.errors.PlanError` listing every
    problem found.
    """
    with _api_errors():
        _check_names(kwargs, _PLAN_FIELDS, "plan_merge")
        plan = _plan_merge(recipe, _plan_options(kwargs, options))
        warn = _warning_sink(on_warning, sys._getframe(1))
        for message in plan.warnings:
            warn(message)
    return plan


def run_merge(
    recipe: Any,
    out_path: str | Path,
    *,
    on_warning: Callable[[str], None] | None = None,
    **options: Any,
) -> MergePlan:
    """Plan and execute a merge into the folder ``out_path``; returns the plan that was executed.

    ``recipe``: a path, YAML text, a dict or a MergeConfig. ``options``: PlanOptions fields
    (``out_shard_size`` as bytes or "5GB", ``unsafe_truncate_embeddings``, ``strict``,
    ``cache_dir``) and RunOptions fields (``device``, ``threads``, ``seed``, ``quiet``,
    ``copy_tokenizer``, ``write_model_card``, ``overwrite``, ``resume``, and ``policy``: an
    :class:`~meldkit.execute.policy.EnginePolicy`). Planning checks everything first; nothing
    is computed when it fails.

    Warnings, from the recipe and plan first and then from the merge (NaN inputs, a resume that
    starts afresh), are emitted as :class:`~meldkit.errors.MeldWarning` or, when given, passed
    to ``on_warning`` instead. Errors are :class:`~meldkit.errors.MeldError` subclasses whose
    hints name keyword options (``overwrite=True``).
    """
    with _api_errors():
        plan_options, run_options = split_options(options)
        plan = _plan_merge(recipe, plan_options)
        from meldkit.execute.runner import execute_plan

        warn = _warning_sink(on_warning, sys._getframe(1))
        for message in plan.warnings:
            warn(message)
        execute_plan(plan, out_path, run_options, warn, _info)
    return plan


# -- raw checkpoints and in-memory state dicts (meldkit.raw) ------------------------------


def prepare_state_dict_merge(
    dicts: Any,
    method: str,
    parameters: Mapping[str, Any] | None = None,
    *,
    base: Any = None,
    model_parameters: Any = None,
    dtype: str | None = None,
    out_dtype: str | None = None,
    missing: str = "error",
    device: str = "cpu",
    seed: int | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> StateDictMerge:
    """Check in-memory inputs once, for merging them many times (an evolutionary search).

    Returns a :class:`~meldkit.raw.state_dicts.StateDictMerge`; its ``merge(parameters,
    model_parameters, out=None)`` merges and returns ``{name: tensor}``, each of the two
    replacing the one given here (None keeps it, ``{}`` clears it): only the parameters are
    resolved again per tensor, the inputs are not checked again. See :func:`merge_state_dicts` for the
    arguments; the checks (names, shapes, dtypes, the method's inputs and parameters) run here
    and raise :class:`~meldkit.errors.PlanError` listing every problem.
    """
    from meldkit.raw.state_dicts import StateDictMerge

    with _api_errors():
        prepared = StateDictMerge(
            dicts,
            method,
            parameters,
            base=base,
            model_parameters=model_parameters,
            dtype=dtype,
            out_dtype=out_dtype,
            missing=missing,
            device=device,
            seed=seed,
        )
        warn = _warning_sink(on_warning, sys._getframe(1))
        for message in prepared.plan.warnings:
            warn(message)
    return prepared


def merge_state_dicts(
    dicts: Any,
    method: str,
    parameters: Mapping[str, Any] | None = None,
    *,
    base: Any = None,
    model_parameters: Any = None,
    dtype: str | None = None,
    out_dtype: str | None = None,
    missing: str = "error",
    device: str = "cpu",
    seed: int | None = None,
    out: dict[str, Any] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Merge in-memory state dicts (``{name: torch.Tensor}`` per model) with any method.

    ``dicts``: a list of state dicts (named ``model_0``, ``model_1``... in messages) or a dict
    of names to state dicts. ``method``: a registered method name. ``parameters``: the
    recipe's top-level ``parameters:`` (scalars, gradient lists over the layer index in the
    tensor name, ``[{"filter": ..., "value": ...}]`` lists); ``model_parameters``: each
    input's own ``parameters:``, a list aligned with ``dicts`` or a dict by input name.
    ``base``: the base model, as a name or position in ``dicts`` or a state dict (one of
    ``dicts``, or one more input). ``dtype``/``out_dtype``: as in recipes (default: the inputs'
    dtype; math in float32). ``missing``: ``"error"``, ``"intersection"`` or ``"union"`` for
    inputs that do not share every tensor name. ``seed``: for random methods (the same seed
    gives the same tensors). ``device``: where the math runs and the results are (``cpu``,
    ``cuda``...).
    ``out``: a dict to fill (a tensor already there is written in place with ``copy_``).

    Tensors a method passes through unchanged may be returned as the input tensors themselves;
    the inputs are never modified. Raises :class:`~meldkit.errors.PlanError` (every problem:
    missing tensors, shape mismatches, bad parameters) before anything is computed, and
    :class:`~meldkit.errors.RecipeError` for an unknown method.
    """
    with _api_errors():
        prepared = prepare_state_dict_merge(
            dicts,
            method,
            parameters,
            base=base,
            model_parameters=model_parameters,
            dtype=dtype,
            out_dtype=out_dtype,
            missing=missing,
            device=device,
            seed=seed,
            on_warning=on_warning or _warning_sink(None, sys._getframe(1)),
        )
        return prepared.merge(out=out)


def merge_raw(
    recipe: Any,
    out: str | Path,
    *,
    missing: str = "error",
    on_warning: Callable[[str], None] | None = None,
    **options: Any,
) -> Path:
    """Merge a recipe whose models are raw checkpoint files (single ``.safetensors``,
    ``.pt``/``.bin`` state dicts) into one safetensors file; returns its path.

    ``out``: a ``.safetensors`` path, or a folder that receives ``model.safetensors``.
    ``missing``: ``"error"`` (default: every tensor some input lacks is reported before
    anything runs), ``"intersection"`` or ``"union"``. ``options``: ``strict``, ``overwrite``,
    ``device``, ``threads``, ``seed``, ``quiet``, ``verbose``, ``policy``.
    """
    from meldkit.raw.run import merge_raw as _merge_raw

    with _api_errors():
        warn = _warning_sink(on_warning, sys._getframe(1))
        return _merge_raw(recipe, out, missing=missing, on_warning=warn, on_info=_info, **options)


def run_multi(
    recipe: str | Path,
    out_path: str | Path,
    intermediate_dir: str | Path,
    *,
    lazy: bool = True,
    stream: bool = False,
    on_warning: Callable[[str], None] | None = None,
    **options: Any,
) -> Any:
    """Run the multi-stage (``mergekit-multi``) recipe file ``recipe``, what ``meldkit multi``
    does: named stages go to ``intermediate_dir`` (reused while their recipe and inputs are
    unchanged, unless ``lazy=False``; ``stream=True`` streams those only later stages read,
    without writing them), the final stage to ``out_path``. ``options`` are run_merge's. Every
    stage is planned before any runs. Returns a :class:`~meldkit.multi.ChainResult`."""
    with _api_errors():
        from meldkit.multi import ChainOptions
        from meldkit.multi.run import run_chain

        plan_options, run = split_options(options)
        chain = ChainOptions(
            Path(intermediate_dir),
            Path(out_path),
            plan_options,
            lazy=lazy,
            stream=stream,
            run={
                "seed": run.seed,
                "device": run.device.split(":")[0],
                "copy_tokenizer": run.copy_tokenizer,
                "write_model_card": run.write_model_card,
            },
        )
        return run_chain(recipe, chain, run, _warning_sink(on_warning, sys._getframe(1)), _info)
