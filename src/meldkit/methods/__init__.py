"""Merge methods: torch-free specs in :mod:`.catalog`, the math in one module per method."""

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
