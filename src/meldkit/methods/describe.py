"""Descriptions of the registered methods for ``meldkit methods [NAME] [--json]``.

Torch-free: only the registry and the catalog (plain data) are imported, so listing methods
is instant and works without the math dependencies loaded. The formula and the YAML example
of one method come from its module's docstring, read from the source file without importing
the module (which imports torch).
"""

from __future__ import annotations

import ast
import importlib.util
import re
import textwrap
from typing import Any

from meldkit.errors import RecipeError, did_you_mean
from meldkit.methods.registry import MethodSpec, ParamSpec, get_method, list_methods

__all__ = [
    "methods_json",
    "methods_table",
    "method_json",
    "find_method",
    "method_docs",
    "describe_method",
    "method_detail_json",
]

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


def _param_cells(p: ParamSpec) -> list[str]:
    """``[name, scope, kind, "default 1.0, 0..1", doc]`` of one parameter."""
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
    return [p.name, p.scope, p.kind, status + bounds, p.doc]


def _param_line(p: ParamSpec) -> str:
    name, scope, kind, status, doc = _param_cells(p)
    return f"    {name:<18} {scope:<13} {kind:<6} {status:<16} {doc}".rstrip()


def _param_table(params: tuple[ParamSpec, ...]) -> list[str]:
    """A header and one aligned line per parameter."""
    rows = [["name", "scope", "kind", "default, bounds", "doc"], *map(_param_cells, params)]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return [
        (
            "    " + "  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths)) + f"  {row[4]}"
        ).rstrip()
        for row in rows
    ]


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
        lines.append(f"  base: {_BASE_WORDS.get(spec.base, spec.base)}; {inputs}")
        if spec.params:
            lines.append("  params:")
            lines.extend(_param_line(p) for p in spec.params)
        else:
            lines.append("  params: none")
        if spec.reference_url:
            lines.append(f"  paper: {spec.reference_url}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


# What the planner does with a tensor that some inputs lack (meldkit.plan.tensor_plans).
_POLICY_WORDS = {
    "merge_available": "an error (every input must have every tensor)",
    "passthrough_single": "passed through when only one input has it; an error otherwise",
    "passthrough_base": "passed through when only the base has it; an error otherwise",
    "need_three": "in fewer than 3 inputs: copied when only the base has it, else skipped "
    "with a warning",
}
_SCOPE_NOTE = (
    "scopes: shared = one value per tensor (top-level, slice or filter `parameters:`); "
    "per_input = one per model, base included; per_non_base = one per model but the base"
)
_YAML_BLOCK = re.compile(r"```yaml\n(.*?)```", re.S)
_RST_ROLE = re.compile(r":[a-z]+:`(~?)([^`]+)`")


def find_method(name: str) -> MethodSpec:
    """The spec of ``name`` for ``meldkit methods NAME`` (case and ``-``/``_`` forgiven);
    an unknown name raises :class:`~meldkit.errors.RecipeError` with the closest names."""
    names = [spec.name for spec in list_methods()]
    for candidate in (name, name.strip().lower().replace("-", "_")):
        if candidate in names:
            return get_method(candidate)
    raise RecipeError(
        f"unknown method '{name}'.{did_you_mean(name.lower(), names)}",
        hint="`meldkit methods` lists every method: " + ", ".join(names),
    )


def _module_docstring(module: str) -> str:
    """The docstring of ``module``, parsed from its source file without importing it."""
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):  # a plugin whose package is not installed
        return ""
    if found is None or not found.origin or not found.origin.endswith(".py"):
        return ""
    try:
        with open(found.origin, encoding="utf-8") as f:
            return ast.get_docstring(ast.parse(f.read())) or ""
    except (OSError, SyntaxError, ValueError):
        return ""


def _plain(text: str) -> str:
    """Docstring markup for a terminal: ``:mod:`a.b``` -> ``a.b``, ``:data:`~a.b.c``` -> ``c``
    (Sphinx's ``~`` shows the last part only), ````x```` -> ```x```."""
    text = _RST_ROLE.sub(lambda m: m[2].rsplit(".", 1)[-1] if m[1] else m[2], text)
    return text.replace("``", "`").replace("::\n", ":\n")


def _only_row(text: str, name: str) -> str:
    """Keep, of a table with a row per method (the task-vector family's), the header and
    ``name``'s row."""
    lines = text.splitlines()
    rows = [line for line in lines if line.startswith("|")]
    if not any(line.split("|")[1].strip() == name for line in rows):
        return text
    keep = set(rows[:2]) | {line for line in rows if line.split("|")[1].strip() == name}
    return "\n".join(line for line in lines if not line.startswith("|") or line in keep)


def method_docs(spec: MethodSpec) -> tuple[str, str]:
    """``(formula, yaml_example)`` of a method: its module docstring without the YAML block,
    and that block when it is an example of this method (else one made from the spec)."""
    doc = _module_docstring(spec.impl.partition(":")[0])
    blocks = _YAML_BLOCK.findall(doc)
    formula = _only_row(_plain(_YAML_BLOCK.sub("", doc)).strip(), spec.name)
    formula = re.sub(r"\n{3,}", "\n\n", formula)
    for block in blocks:
        if re.search(rf"^merge_method: {re.escape(spec.name)}\s*$", block, re.M):
            return formula, block.rstrip() + "\n"
    return formula, _made_example(spec)


def _example_value(p: ParamSpec) -> Any:
    # 0.5 for what must be given, and for density so the example shows sparsification at work.
    if p.required or p.name == "density":
        return 0.5 if p.kind == "float" else p.default
    return p.default


def _made_example(spec: MethodSpec) -> str:
    """A recipe for ``spec`` built from its input rules and parameters."""
    lines = [f"merge_method: {spec.name}"]
    with_base = spec.base in ("required", "optional")
    if with_base:
        lines.append("base_model: ./base")
    n = max(spec.min_non_base, spec.min_inputs - (1 if with_base else 0), 1)
    n = max(n, 2) if spec.max_non_base is None and spec.max_inputs is None else n
    per_model = [p for p in spec.params if p.scope != "shared" and _example_value(p) is not None]
    lines.append("models:")
    for i in range(n):
        params = ", ".join(f"{p.name}: {_yaml(_example_value(p))}" for p in per_model)
        lines.append(
            f"  - {{model: ./model_{chr(ord('a') + i)}"
            + (f", parameters: {{{params}}}}}" if params else "}")
        )
    shared = [p for p in spec.params if p.scope == "shared" and _example_value(p) is not None]
    if shared:
        values = ", ".join(f"{p.name}: {_yaml(_example_value(p))}" for p in shared)
        lines.append(f"parameters: {{{values}}}")
    return "\n".join(lines) + "\n"


def _yaml(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _inputs_lines(spec: MethodSpec) -> list[str]:
    counted = " (the base counts as one)" if spec.base in ("required", "optional") else ""
    lines = [
        f"  base model: {_BASE_WORDS.get(spec.base, spec.base)}",
        f"  input models: {_count_range(spec.min_inputs, spec.max_inputs)}{counted}",
    ]
    if spec.min_non_base or spec.max_non_base is not None:
        lines.append(
            f"  models besides the base: {_count_range(spec.min_non_base, spec.max_non_base)}"
        )
    lines.append(
        f"  a tensor some inputs lack: {_POLICY_WORDS.get(spec.optional_policy, spec.optional_policy)}"
    )
    lines.append(
        "  random: yes (the same --random-seed gives the same bytes; default 0)"
        if spec.randomized
        else "  random: no"
    )
    return lines


def describe_method(spec: MethodSpec) -> str:
    """Everything about one method, for ``meldkit methods NAME``: formula, parameters with
    scopes, defaults and bounds, input rules, paper, CPU fast path and a YAML example."""
    formula, example = method_docs(spec)
    lines = [f"{spec.name} ({spec.pretty_name})"]
    if spec.summary:
        lines.append(f"  {spec.summary}")
    lines += ["", f"formula ({spec.impl.partition(':')[0]}):"]
    lines += [f"  {line}".rstrip() for line in (formula or "(not documented)").splitlines()]
    lines += ["", "parameters:"]
    if spec.params:
        lines += _param_table(spec.params)
        lines += textwrap.wrap(f"({_SCOPE_NOTE})", 98, initial_indent="  ", subsequent_indent="   ")
    else:
        lines.append("  none")
    lines += ["", "inputs:", *_inputs_lines(spec), ""]
    lines.append(f"paper: {spec.reference_url or 'none'}")
    fast = (
        f"yes ({spec.fast_impl}); MELDKIT_REFERENCE_MATH=1 runs the reference formula instead"
        if spec.fast_impl
        else "no (the reference formula runs everywhere)"
    )
    lines += [f"CPU fast path: {fast}", "", "example recipe:"]
    lines += [f"  {line}".rstrip() for line in example.splitlines()]
    return "\n".join(lines) + "\n"


def method_detail_json(spec: MethodSpec) -> dict[str, Any]:
    """:func:`method_json` plus the formula, the YAML example and the modules of the
    reference formula (``impl``) and of the CPU fast path (``fast_impl``, or None)."""
    formula, example = method_docs(spec)
    return {
        **method_json(spec),
        "impl": spec.impl,
        "fast_impl": spec.fast_impl,
        "formula": formula,
        "example": example,
    }
