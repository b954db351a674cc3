"""Resolving and checking a method's parameters for one output tensor.

Scopes, most specific first (MergeKit's ``ConfigReader``): the source's own ``parameters``
(per-model parameters in ``models:`` form), the slice, the module, the top level. Shared
parameters skip the source scope and filter on the output tensor name; per-input ones filter on
the source model's own tensor name.

Before any tensor is planned, :func:`unknown_parameter_warnings` notes parameter names the
method does not read; a misspelt one (``wieght``) is remembered, so that a required parameter
found missing names it instead of only saying "missing". :func:`filter_warnings` catches
filters that match no tensor name, whose values would silently never apply.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meldkit.config.filters import closest_name_part, matches_any, setting_filters
from meldkit.config.params import resolve_parameter
from meldkit.config.schema import Parameters
from meldkit.errors import did_you_mean
from meldkit.methods.registry import MethodSpec, ParamSpec

__all__ = [
    "Misplaced",
    "ParamScope",
    "ProblemLog",
    "filter_warnings",
    "resolve_tensor_parameters",
    "unknown_parameter_warnings",
]

# How method checks refer to an input (its index in per_input); replaced by the model's label.
_INPUT_REF = re.compile(r"\binput (\d+)\b")


@dataclass(frozen=True)
class ParamScope:
    """One ``parameters:`` block of the recipe: where it is, and the models it applies to.

    ``per_model`` is true for a source's (or a ``models:`` entry's) own block.
    """

    where: str
    parameters: Parameters
    models: tuple[str, ...]
    per_model: bool = False


@dataclass(frozen=True)
class Misplaced:
    """Why the parameter ``wanted`` may be missing wherever ``scope`` (compared by identity)
    applies: a misspelling of it, or the key written where it is ignored.

    ``problem`` is the whole report; ``warning_key`` the warning that said the same already
    (dropped, so that --strict, which turns warnings into problems, reports it once).
    """

    scope: Parameters
    wanted: str
    problem: str
    warning_key: tuple[Any, ...]


@dataclass
class ProblemLog:
    """Problems and warnings, deduplicated by key so one bad setting is reported once."""

    problems: dict[tuple[Any, ...], str] = field(default_factory=dict)
    warnings: dict[tuple[Any, ...], str] = field(default_factory=dict)
    misplaced: list[Misplaced] = field(default_factory=list)

    def problem(self, key: tuple[Any, ...], message: str) -> None:
        self.problems.setdefault(key, message)

    def warn(self, key: tuple[Any, ...], message: str) -> None:
        self.warnings.setdefault(key, message)


def _coerce(spec: ParamSpec, value: Any) -> tuple[Any, str | None]:
    """Convert a resolved value to the parameter's kind; returns (value, error)."""
    if spec.kind in ("float", "int"):
        if isinstance(value, bool):
            return value, f"expected a number, got {value!r}"
        if isinstance(value, str):
            try:
                value = float(value)  # YAML reads `1e-5` as a string
            except ValueError:
                return value, f"expected a number, got {value!r}"
        if not isinstance(value, (int, float)) or math.isnan(value):
            return value, f"expected a number, got {value!r}"
        if spec.kind == "int":
            if float(value) != int(value):
                return value, f"expected an integer, got {value!r}"
            value = int(value)
        else:
            value = float(value)
        if spec.minimum is not None and value < spec.minimum:
            return value, f"{value!r} is below the minimum {spec.minimum}"
        if spec.maximum is not None and value > spec.maximum:
            return value, f"{value!r} is above the maximum {spec.maximum}"
        return value, None
    if spec.kind == "bool":
        if isinstance(value, bool):
            return value, None
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true", None
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value), None
        return value, f"expected true or false, got {value!r}"
    return (value if isinstance(value, str) else str(value)), None


def _missing_explained(
    spec: ParamSpec, scopes: Sequence[Parameters | None], log: ProblemLog
) -> bool:
    """Report a missing required parameter as the misplaced key it likely is; False if none."""
    found = next(
        (
            m
            for m in log.misplaced
            if m.wanted == spec.name and any(m.scope is s for s in scopes if s is not None)
        ),
        None,
    )
    if found is None:
        return False
    log.problem(("misplaced", found.problem), found.problem)
    log.warnings.pop(found.warning_key, None)
    return True


def _resolve_one(
    spec: ParamSpec,
    scopes: Sequence[Parameters | None],
    tensor_name: str,
    t: float,
    who: str,
    log: ProblemLog,
) -> tuple[Any, bool]:
    """The parameter's value for one tensor, and whether it is usable (present and valid)."""
    value = resolve_parameter(spec.name, scopes, tensor_name, t)
    if value is None:
        if spec.required and not _missing_explained(spec, scopes, log):
            log.problem(
                ("missing", spec.name, who),
                f"missing required parameter '{spec.name}' for {who} (first needed by tensor {tensor_name})",
            )
        return spec.default, not spec.required
    coerced, error = _coerce(spec, value)
    if error:
        log.problem(
            ("invalid", spec.name, who, str(value)), f"parameter '{spec.name}' for {who}: {error}"
        )
        return coerced, False
    return coerced, True


def resolve_tensor_parameters(
    method: MethodSpec,
    *,
    out_name: str,
    source_names: Sequence[str],
    source_scopes: Sequence[Parameters | None],
    source_labels: Sequence[str],
    shared_scopes: Sequence[Parameters | None],
    base_index: int | None,
    t: float,
    log: ProblemLog,
) -> tuple[dict[str, Any], tuple[dict[str, Any], ...]]:
    """Resolve every parameter of ``method`` for one output tensor."""
    usable = True
    shared: dict[str, Any] = {}
    for spec in method.params:
        if spec.scope == "shared":
            shared[spec.name], ok = _resolve_one(spec, shared_scopes, out_name, t, "the merge", log)
            usable &= ok
    per_input: list[dict[str, Any]] = []
    for i, (src_name, own) in enumerate(zip(source_names, source_scopes)):
        values: dict[str, Any] = {}
        for spec in method.params:
            if spec.scope == "per_input" or (spec.scope == "per_non_base" and i != base_index):
                scopes = [own, *shared_scopes]
                values[spec.name], ok = _resolve_one(
                    spec, scopes, src_name, t, source_labels[i], log
                )
                usable &= ok
        per_input.append(values)
    # Cross-parameter checks assume valid values (a weight of "abc" would crash them); the
    # invalid ones are already reported above.
    if method.check is not None and usable:
        for message in method.check(shared, per_input, base_index):
            # Checks say "input N"; the user knows the inputs by their model names.
            message = _INPUT_REF.sub(
                lambda m: (
                    source_labels[int(m.group(1))]
                    if int(m.group(1)) < len(source_labels)
                    else m.group(0)
                ),
                message,
            )
            log.problem(("check", message), f"{message} (tensor {out_name})")
    return shared, tuple(per_input)


def _typo_target(key: str, names: Sequence[str]) -> str | None:
    """The parameter name ``key`` most likely misspells (case aside, or the closest)."""
    for name in names:
        if key.lower() == name.lower():
            return name
    close = difflib.get_close_matches(key, list(names), n=1, cutoff=0.6)
    return close[0] if close else None


def unknown_parameter_warnings(
    method: MethodSpec, scopes: Sequence[ParamScope], log: ProblemLog
) -> None:
    """Warn about parameter names the method does not read, and shared ones set per model;
    remember the misspellings for the "missing required parameter" problems."""
    names = [p.name for p in method.params]
    for scope in scopes:
        where = scope.where
        for key in scope.parameters:
            spec = method.param(key)
            if spec is None:
                log.warn(
                    ("unknown-param", where, key),
                    f"{where}: parameter '{key}' is not used by {method.name} and is ignored.{did_you_mean(key, names)}",
                )
                target = _typo_target(key, names)
                if target is not None:
                    problem = (
                        f"{where}: missing required parameter '{target}' for {method.name}; "
                        f"found '{key}' (did you mean '{target}'?)"
                    )
                    warning = ("unknown-param", where, key)
                    log.misplaced.append(Misplaced(scope.parameters, target, problem, warning))
            elif spec.scope == "shared" and scope.per_model:
                log.warn(
                    ("shared-per-model", where, key),
                    f"{where}: '{key}' is one value for the whole merge and is ignored per model "
                    "(as MergeKit does); set it under the top-level or slice 'parameters:'",
                )


def _models_phrase(models: Sequence[str]) -> str:
    if len(models) <= 1:
        return "".join(models)
    return ", ".join(models[:-1]) + f" or {models[-1]}"


def filter_warnings(
    method: MethodSpec,
    scopes: Sequence[ParamScope],
    names_of: Mapping[str, frozenset[str]],
    log: ProblemLog,
) -> None:
    """Warn about each filter of a method parameter that matches no tensor name of the models
    its scope applies to (``names_of``: per model, the tensor names it is planned with)."""
    for scope in scopes:
        for key, setting in scope.parameters.items():
            if method.param(key) is None:
                continue  # already warned about as unknown
            names = frozenset().union(*(names_of.get(m, frozenset()) for m in scope.models))
            for flt in dict.fromkeys(setting_filters(setting)):
                if not names or matches_any(flt, names):
                    continue
                close = closest_name_part(flt, names)
                log.warn(
                    ("filter", scope.where, key, flt),
                    f"{scope.where}: filter '{flt}' of parameter '{key}' matches no tensor name "
                    f"of {_models_phrase(scope.models)}, so its value is never used."
                    + (f" Did you mean '{close}'?" if close else ""),
                )
