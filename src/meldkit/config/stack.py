"""Parsing ``models:``, ``slices:`` and ``modules:``: what each output layer is made of."""

from __future__ import annotations

from typing import Any

from meldkit.config.keys import (
    MODEL_KEYS,
    MODULE_KEYS,
    SLICE_KEYS,
    SOURCE_KEYS,
    ParseLog,
    check_keys,
    expect_dict,
    expect_list,
    missing_key,
    typo_of,
)
from meldkit.config.modelref import parse_model_ref
from meldkit.config.ranges import range_problem, slice_length_problem
from meldkit.config.schema import InputModel, InputSource, ModuleConfig, OutputSlice
from meldkit.config.settings import parse_parameters
from meldkit.errors import RecipeError

__all__ = ["parse_stack", "parse_modules"]


def _parse_model(value: Any, where: str, log: ParseLog) -> InputModel:
    if isinstance(value, str):
        return InputModel(parse_model_ref(value, where))
    d = expect_dict(value, where)
    check_keys(d, MODEL_KEYS, where, log)
    if "model" not in d:
        raise missing_key(
            d, "model", MODEL_KEYS, where, hint="each entry needs `model: <folder or hub id>`"
        )
    return InputModel(
        parse_model_ref(d["model"], f"{where}.model"),
        parse_parameters(d.get("parameters"), f"{where}.parameters"),
    )


def _parse_layer_range(value: Any, where: str) -> tuple[int, int]:
    """The ``[start, end]`` pair; whether it fits is checked apart (see config.ranges)."""
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise RecipeError(
            f"{where}: expected [start, end] integers, got {value!r}",
            hint="layer_range is half-open: [0, 8] selects layers 0..7",
        )
    return (value[0], value[1])


def _parse_source(value: Any, where: str, log: ParseLog) -> InputSource:
    sd = expect_dict(value, where)
    check_keys(sd, SOURCE_KEYS, where, log)
    for key, hint in (("model", None), ("layer_range", "add layer_range: [start, end]")):
        if key not in sd:
            raise missing_key(sd, key, SOURCE_KEYS, where, hint=hint)
    source = InputSource(
        parse_model_ref(sd["model"], f"{where}.model"),
        _parse_layer_range(sd["layer_range"], f"{where}.layer_range"),
        parse_parameters(sd.get("parameters"), f"{where}.parameters"),
    )
    problem = range_problem(f"{where}.layer_range", *source.layer_range)
    if problem:
        log.range_problems.append(problem)
    return source


def _parse_slice(value: Any, where: str, log: ParseLog) -> OutputSlice:
    d = expect_dict(value, where)
    check_keys(d, SLICE_KEYS, where, log)
    if d.get("sources") is None:
        raise missing_key(
            d, "sources", SLICE_KEYS, where, hint="add sources: [{model, layer_range}]"
        )
    raw_sources = expect_list(d["sources"], f"{where}.sources")
    if not raw_sources:
        raise RecipeError(f"{where}.sources: a slice needs at least one source")
    before = len(log.range_problems)
    sources = [_parse_source(s, f"{where}.sources[{i}]", log) for i, s in enumerate(raw_sources)]
    # Lengths only compare when every range is valid: a negative one has no meaningful length.
    if len(log.range_problems) == before:
        spans = [(str(s.model), *s.layer_range) for s in sources]
        problem = slice_length_problem(where, spans)
        if problem:
            log.range_problems.append(problem)
    base = (
        parse_model_ref(d["base_model"], f"{where}.base_model")
        if d.get("base_model") is not None
        else None
    )
    rw = d.get("residual_weight")
    if rw is not None:
        log.warn(f"'{where}.residual_weight' is ignored (MergeKit parses it but never uses it)")
    return OutputSlice(
        tuple(sources), base, parse_parameters(d.get("parameters"), f"{where}.parameters"), rw
    )


def parse_stack(
    d: dict[str, Any], where: str, known: tuple[str, ...], log: ParseLog
) -> tuple[tuple[InputModel, ...] | None, tuple[OutputSlice, ...] | None]:
    """The ``models:`` or ``slices:`` of the recipe or of a module (``where``)."""
    present = [k for k in ("models", "slices") if d.get(k) is not None]
    if len(present) != 1:
        found, wanted = typo_of(d, ["models", "slices"], known) if not present else ("", "")
        raise RecipeError(
            f"{where or 'recipe'}: give exactly one of 'models' or 'slices'"
            + (" (found both)" if len(present) == 2 else "")
            + (f" (found '{found}': did you mean '{wanted}'?)" if found else ""),
            hint="`models:` merges whole models; `slices:` picks layer ranges",
        )
    key = present[0]
    prefix = f"{where}.{key}" if where else key
    items = expect_list(d[key], prefix)
    if not items:
        raise RecipeError(f"{prefix}: the list is empty")
    if key == "models":
        return tuple(_parse_model(m, f"{prefix}[{i}]", log) for i, m in enumerate(items)), None
    return None, tuple(_parse_slice(s, f"{prefix}[{i}]", log) for i, s in enumerate(items))


def parse_modules(value: Any, log: ParseLog) -> dict[str, ModuleConfig]:
    """The ``modules:`` mapping of a multi-module recipe."""
    raw_modules = expect_dict(value, "modules")
    if not raw_modules:
        raise RecipeError(
            "modules: the mapping is empty", hint="give each module its `models:` or `slices:`"
        )
    modules: dict[str, ModuleConfig] = {}
    for name, mod in raw_modules.items():
        mw = f"modules.{name}"
        md = expect_dict(mod, mw)
        check_keys(md, MODULE_KEYS, mw, log)
        m_models, m_slices = parse_stack(md, mw, MODULE_KEYS, log)
        modules[str(name)] = ModuleConfig(
            m_models, m_slices, parse_parameters(md.get("parameters"), f"{mw}.parameters")
        )
    return modules
