"""Descriptions of the registered methods for ``meldkit methods [--json]``.

Torch-free: only the registry and the catalog (plain data) are imported, so listing methods
is instant and works without the math dependencies loaded.
"""

from __future__ import annotations

from typing import Any

from meldkit.methods.registry import MethodSpec, ParamSpec, list_methods

__all__ = ["methods_json", "methods_table", "method_json"]

_BASE_WORDS = {
    "required": "required",
    "optional": "optional",
    "forbidden": "not allowed",
    "ignored": "ignored (a given base is one more input)",
}


def _param_json(p: ParamSpec) -> dict[str, Any]:
    return {
        "name": p.name,
        "scope": p.scope,
        "kind": p.kind,
        "default": p.default,
        "required": p.required,
        "minimum": p.minimum,
        "maximum": p.maximum,
        "doc": p.doc,
    }


def method_json(spec: MethodSpec) -> dict[str, Any]:
    """One method as a JSON-ready dict (no callables)."""
    return {
        "name": spec.name,
        "pretty_name": spec.pretty_name,
        "summary": spec.summary,
        "base": spec.base,
        "min_inputs": spec.min_inputs,
        "max_inputs": spec.max_inputs,
        "min_non_base": spec.min_non_base,
        "max_non_base": spec.max_non_base,
        "optional_policy": spec.optional_policy,
        "randomized": spec.randomized,
        "reference_url": spec.reference_url or None,
        "params": [_param_json(p) for p in spec.params],
    }


def methods_json() -> list[dict[str, Any]]:
    """Every registered method, sorted by name, as JSON-ready dicts."""
    return [method_json(spec) for spec in list_methods()]


def _count_range(low: int, high: int | None) -> str:
    if high is None:
        return f">= {low}"
    if high == low:
        return f"exactly {low}"
    return f"{low}-{high}"


def _param_line(p: ParamSpec) -> str:
    if p.required:
        status = "required"
    elif p.default is None:
        status = "optional"
    else:
        status = f"default {str(p.default).lower() if isinstance(p.default, bool) else p.default}"
    bounds = ""
    if p.minimum is not None and p.maximum is not None:
        bounds = f", {p.minimum:g}..{p.maximum:g}"
    elif p.minimum is not None:
        bounds = f", >= {p.minimum:g}"
    elif p.maximum is not None:
        bounds = f", <= {p.maximum:g}"
    return f"    {p.name:<18} {p.scope:<13} {p.kind:<6} {status + bounds:<16} {p.doc}".rstrip()


def methods_table() -> str:
    """A human-readable listing: each method, its base rule, inputs, params and paper."""
    blocks = []
    for spec in list_methods():
        lines = [f"{spec.name} ({spec.pretty_name})" + (" [random]" if spec.randomized else "")]
        if spec.summary:
            lines.append(f"  {spec.summary}")
        inputs = f"inputs {_count_range(spec.min_inputs, spec.max_inputs)}"
        if spec.min_non_base or spec.max_non_base is not None:
            inputs += f", non-base {_count_range(spec.min_non_base, spec.max_non_base)}"
        lines.append(f"  base: {_BASE_WORDS[spec.base]}; {inputs}")
        if spec.params:
            lines.append("  params:")
            lines.extend(_param_line(p) for p in spec.params)
        else:
            lines.append("  params: none")
        if spec.reference_url:
            lines.append(f"  paper: {spec.reference_url}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"
