"""Recipes for every registered method, built from the method's own spec (contract + params).

Shared by the end-to-end method tests and the device parity check.
"""

from __future__ import annotations

from pathlib import Path

from meldkit.methods.registry import MethodSpec

# Values for parameters a recipe must or may set; anything else keeps its default.
_VALUES = {
    "weight": [0.6, 0.4, 0.5],
    "t": 0.3,
    "density": 0.6,
    "epsilon": 0.05,
    "gamma": 0.05,
    "select_topk": 0.5,
    "lambda": 0.9,
}


def recipe_for(spec: MethodSpec, base: Path, models: list[Path], dtype: str = "float32") -> str:
    """A `models:` recipe that satisfies ``spec``'s input contract."""
    use_base = spec.base in ("required", "optional")
    max_nb = spec.max_non_base if spec.max_non_base is not None else len(models)
    if spec.max_inputs is not None:
        max_nb = min(max_nb, spec.max_inputs - (1 if use_base else 0))
    n = max(min(len(models), max_nb), spec.min_non_base, 1)
    if spec.base == "forbidden" or spec.name == "passthrough":
        use_base, n = False, 1
    lines = [f"merge_method: {spec.name}"]
    if use_base:
        lines.append(f"base_model: {base}")
    lines.append("models:")
    shared = {}
    for i, model in enumerate(models[:n]):
        params = {}
        for p in spec.params:
            if (
                p.name in _VALUES
                and p.scope != "shared"
                and (p.required or p.name in ("density", "epsilon", "gamma"))
            ):
                v = _VALUES[p.name]
                params[p.name] = v[i % len(v)] if isinstance(v, list) else v
        body = ", ".join(f"{k}: {v}" for k, v in params.items())
        lines.append(f"  - model: {model}" + (f"\n    parameters: {{{body}}}" if body else ""))
    if spec.base == "ignored" and any(p.scope == "per_input" and p.required for p in spec.params):
        lines.append(f"  - model: {base}\n    parameters: {{weight: 0.2}}")
    for p in spec.params:
        if (
            p.scope == "shared"
            and (p.required or p.name in ("lambda", "select_topk"))
            and p.name in _VALUES
        ):
            shared[p.name] = _VALUES[p.name]
    if shared:
        lines.append("parameters: {" + ", ".join(f"{k}: {v}" for k, v in shared.items()) + "}")
    lines.append(f"dtype: {dtype}")
    return "\n".join(lines) + "\n"
