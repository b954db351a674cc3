"""Merge methods: torch-free specs in :mod:`.catalog`, the reference math in one module per
method (fast paths live in :mod:`meldkit.kernels`; nothing here imports them)."""

from meldkit.methods.registry import (
    MergeContext,
    MethodSpec,
    ParamSpec,
    get_method,
    list_methods,
    load_merge_function,
    register,
)

__all__ = [
    "MergeContext",
    "MethodSpec",
    "ParamSpec",
    "get_method",
    "list_methods",
    "load_merge_function",
    "register",
]
