"""Helpers for the method tests: call a method the way the planner and engine would."""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from meldkit.methods import MergeContext, arcee_fusion, get_method, load_merge_function, sparsify
from meldkit.methods.registry import MergeFunction, MethodSpec


def resolve_params(
    spec: MethodSpec,
    n_inputs: int,
    base_index: int | None,
    shared: Mapping[str, Any] | None = None,
    per_input: Sequence[Mapping[str, Any]] | Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Fill defaults from the spec as the planner does; ``per_input`` may be one dict for all.

    A per-non-base value is never given to the base, like the planner.
    """
    resolved_shared = {p.name: p.default for p in spec.params if p.scope == "shared"}
    resolved_shared.update(shared or {})
    if per_input is None or isinstance(per_input, Mapping):
        per_input = [per_input or {}] * n_inputs
    resolved: list[dict[str, Any]] = []
    for i in range(n_inputs):
        values: dict[str, Any] = {}
        for p in spec.params:
            in_scope = p.scope == "per_input" or (p.scope == "per_non_base" and i != base_index)
            if not in_scope:
                continue
            if p.name in per_input[i]:
                values[p.name] = per_input[i][p.name]
            else:
                values[p.name] = p.default
        resolved.append(values)
    return resolved_shared, resolved


def run_method(
    name: str,
    inputs: Sequence[torch.Tensor],
    base_index: int | None = None,
    shared: Mapping[str, Any] | None = None,
    per_input: Sequence[Mapping[str, Any]] | Mapping[str, Any] | None = None,
    *,
    tensor_name: str = "model.layers.0.mlp.up_proj.weight",
    seed: int | None = 0,
    check: bool = True,
) -> torch.Tensor:
    """Resolve parameters, run the spec's check, then the merge function."""
    spec = get_method(name)
    shared_values, per_values = resolve_params(spec, len(inputs), base_index, shared, per_input)
    if check and spec.check is not None:
        problems = spec.check(shared_values, per_values, base_index)
        assert not problems, problems
    fn = load_merge_function(spec)
    ctx = MergeContext(name=tensor_name, seed=seed)
    return fn(list(inputs), base_index, shared_values, per_values, ctx)


def t(*values: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A small 1-D tensor."""
    return torch.tensor(values, dtype=dtype)


def tied_inputs(
    shape: tuple[int, ...], n_models: int, dtype: torch.dtype, seed: int
) -> list[torch.Tensor]:
    """A base and ``n_models`` models whose deltas lie on a grid of 1/8: many exact ties in
    ``|δ|`` and in statistics of it, some zeros, both signs (for fused-vs-eager comparisons)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    deltas = [torch.randint(-6, 7, shape, generator=g).float() / 8 for _ in range(n_models)]
    return [base.to(dtype)] + [(base + d).to(dtype) for d in deltas]


def reference_function(name: str) -> MergeFunction:
    """The reference formula of method ``name`` (its spec's ``impl``), never a fast path."""
    module_name, _, attr = get_method(name).impl.partition(":")
    return getattr(importlib.import_module(module_name), attr or name)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bits (NaN payloads and the sign of zero included)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal(a.contiguous().view(bits), b.contiguous().view(bits))


def arcee_formula(
    base: torch.Tensor, other: torch.Tensor, ctx: MergeContext, kl: torch.Tensor
) -> torch.Tensor:
    """arcee_fusion on whole float32 tensors given each row's KL (``(rows, 1)`` float32): the
    importance, the with-replacement sample of MergeKit's size (each draw's row, then, rows in
    order, each draw's column: multiply-shift of the seeded hash streams), torch.quantile's
    quartiles and the threshold; float32."""
    shape = base.shape
    b, x = base.float(), other.float()
    length = shape[-1] if len(shape) > 1 else max(b.numel(), 1)
    rows = b.numel() // length
    imp = ((x - b).abs().reshape(rows, -1) * kl).reshape(-1)
    n = imp.numel()
    if n > arcee_fusion.SAMPLE_SIZE:
        size = arcee_fusion.SAMPLE_SIZE
        row_draws = (sparsify.hash32(ctx.stream_key("arcee_fusion/rows"), 0, size) * rows) >> 32
        columns = (sparsify.hash32(ctx.stream_key("arcee_fusion/columns"), 0, size) * length) >> 32
        sample = imp[row_draws.sort().values * length + columns]
    else:
        sample = imp
    q1, median, q3 = torch.quantile(sample, torch.tensor([0.25, 0.5, 0.75]))
    return b + (x - b) * (imp.reshape(shape) >= median + 1.5 * (q3 - q1))
