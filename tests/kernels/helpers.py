"""Helpers for the fast-path tests: a method's FastPath, and both paths on one call."""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import torch

from meldkit.kernels import runner
from meldkit.methods import MergeContext, get_method
from meldkit.methods.registry import FastPath
from tests.methods.helpers import reference_function, resolve_params


def fast_path(name: str) -> FastPath:
    """The FastPath that method ``name``'s spec names (``fast_impl``)."""
    target = get_method(name).fast_impl
    assert target is not None, f"{name} has no fast path"
    module_name, _, attr = target.partition(":")
    fast = getattr(importlib.import_module(module_name), attr or name)
    assert isinstance(fast, FastPath)
    return fast


def both(
    name: str,
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any] | None = None,
    per_input: Sequence[Mapping[str, Any]] | Mapping[str, Any] | None = None,
    ctx: MergeContext | None = None,
    reference_ctx: MergeContext | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(fast, reference)``: the method's fast path (which must cover the call) and its
    reference function, called directly, on fresh lists of the same inputs. The reference
    gets ``reference_ctx`` when given (e.g. without the output dtype), else ``ctx``."""
    spec = get_method(name)
    shared_v, per_v = resolve_params(spec, len(inputs), base_index, shared, per_input)
    ctx = ctx or MergeContext("model.layers.1.mlp.up_proj.weight", 5, "cpu")
    fast = fast_path(name)
    assert fast.supports(list(inputs), base_index, shared_v, per_v, ctx), f"{name}: not covered"
    got = fast.merge(list(inputs), base_index, shared_v, per_v, ctx)
    want = reference_function(name)(list(inputs), base_index, shared_v, per_v, reference_ctx or ctx)
    return got, want


def set_threads(monkeypatch: pytest.MonkeyPatch, threads: int) -> None:
    """Make the kernels split their work as on ``threads`` math threads."""
    monkeypatch.setattr(runner.torch, "get_num_threads", lambda: threads)
