"""Resolving and checking a method's parameters for one output tensor.

Scopes, most specific first (MergeKit's ``ConfigReader``): the source's own ``parameters``
(per-model parameters in ``models:`` form), the slice, the module, the top level. Shared
parameters skip the source scope and filter on the output tensor name; per-input ones filter on
the source model's own tensor name.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meldkit.config.params import resolve_parameter
from meldkit.config.schema import Parameters
from meldkit.errors import did_you_mean
from meldkit.methods.registry import MethodSpec, ParamSpec

__all__ = ["ProblemLog", "resolve_tensor_parameters", "unknown_parameter_warnings"]

# How method checks refer to an input (its index in per_input); replaced by the model's label.
_INPUT_REF = re.compile(r"\binput (\d+)\b")


@dataclass
class ProblemLog:
    """Problems and warnings, deduplicated by key so one bad setting is reported once."""

    problems: dict[tuple[Any, ...], str] = field(default_factory=dict)
    warnings: dict[tuple[Any, ...], str] = field(default_factory=dict)

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
        if spec.required:
            log.problem(
                ("missing", spec.name, who),
                f"missing required parameter '{spec.name}' for {who} (first needed by tensor {tensor_name})",
            )
            return spec.default, False
        return spec.default, True
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


def unknown_parameter_warnings(
    method: MethodSpec,
    global_scopes: Mapping[str, Parameters],
    source_scopes: Mapping[str, Parameters],
    log: ProblemLog,
) -> None:
    """Warn about parameter names the method does not read, and shared ones set per model."""
    names = [p.name for p in method.params]
    for where, scope in [*global_scopes.items(), *source_scopes.items()]:
        for key in scope:
            spec = method.param(key)
            if spec is None:
                log.warn(
                    ("unknown-param", where, key),
                    f"{where}: parameter '{key}' is not used by {method.name} and is ignored.{did_you_mean(key, names)}",
                )
            elif spec.scope == "shared" and where in source_scopes:
                log.warn(
                    ("shared-per-model", where, key),
                    f"{where}: '{key}' is one value for the whole merge and is ignored per model "
                    "(as MergeKit does); set it under the top-level or slice 'parameters:'",
                )
