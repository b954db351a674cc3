"""The merge-method registry: torch-free method descriptions and lazy loading of their math.

A method is two things:

* a :class:`MethodSpec` (name, parameters with scopes and defaults, input contract, paper),
  listed in :mod:`meldkit.methods.catalog`. Specs are plain data, so planning and
  ``meldkit methods`` never import torch;
* a merge function in its own module, named like the method (``impl =
  "meldkit.methods.linear:linear"``), with the signature of :class:`MergeFunction`: the
  reference formula in torch, imported only when a tensor is computed.

A method may also name a fast path (``fast_impl = "meldkit.kernels.nearswap:nearswap"``): a
:class:`FastPath` whose ``supports`` says which calls it covers. :func:`load_merge_function`
is the one place where the choice is made, per call; the math modules never import the fast
paths, and ``MELDKIT_REFERENCE_MATH=1`` turns every fast path off (to compare, or to debug).
"""

from __future__ import annotations

import hashlib
import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from meldkit.errors import RecipeError, did_you_mean

if TYPE_CHECKING:
    import torch

__all__ = [
    "ParamSpec",
    "MethodSpec",
    "MergeContext",
    "MergeFunction",
    "FastPath",
    "register",
    "get_method",
    "list_methods",
    "load_merge_function",
]

Scope = Literal["shared", "per_input", "per_non_base"]
ParamKind = Literal["float", "int", "bool", "str"]
BaseRule = Literal["required", "optional", "forbidden", "ignored"]
# What happens when a tensor is missing from some inputs (MergeKit's optional_tensor_policy).
OptionalPolicy = Literal["merge_available", "passthrough_single", "passthrough_base", "need_three"]


@dataclass(frozen=True)
class ParamSpec:
    """One parameter a method reads from the recipe.

    ``scope``: ``shared`` (one value per tensor, read from slice/module/global scopes),
    ``per_input`` (one value per input model, base included) or ``per_non_base`` (one value per
    input except the base). ``minimum``/``maximum`` are inclusive bounds checked at plan time.
    """

    name: str
    scope: Scope
    kind: ParamKind = "float"
    default: float | int | bool | str | None = None
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    doc: str = ""


@dataclass(frozen=True)
class MethodSpec:
    """Everything the planner and the CLI need to know about a method, without its math.

    Input counts include the base model when it is an input. ``base``:
    ``required`` (must be given and is passed at ``base_index``), ``optional``, ``forbidden``,
    or ``ignored`` (a given base is just one more input, as MergeKit's linear and karcher do).
    ``check`` receives the resolved ``(shared, per_input, base_index)`` of one tensor and
    returns problems as strings (for cross-parameter rules such as DELLA's epsilon range).
    """

    name: str
    pretty_name: str
    impl: str
    # "module:attribute" of a FastPath (an optimized twin of ``impl``), or None.
    fast_impl: str | None = None
    params: tuple[ParamSpec, ...] = ()
    base: BaseRule = "optional"
    min_inputs: int = 1
    max_inputs: int | None = None
    min_non_base: int = 0
    max_non_base: int | None = None
    optional_policy: OptionalPolicy = "merge_available"
    reference_url: str = ""
    randomized: bool = False
    # Each output element depends only on the same element of the inputs (and per-tensor
    # parameters), so the engine may compute a large tensor in blocks of rows.
    elementwise: bool = False
    # Elementwise for some parameters only (consensus over task arithmetic, not over TIES,
    # whose density trims by each tensor's magnitudes): asked per tensor with its shared and
    # per-input parameters when ``elementwise`` is False.
    elementwise_when: Callable[[Mapping[str, Any], Sequence[Mapping[str, Any]]], bool] | None = (
        field(default=None, compare=False)
    )
    # The merge function accepts inputs in their stored floating dtype (bf16, fp16) and does
    # its math in float32 (float64) itself, e.g. with `out_f32.add_(x_bf16, alpha=w)`; the
    # engine then skips the separate upcast pass.
    native_inputs: bool = False
    summary: str = ""
    check: (
        Callable[[Mapping[str, Any], Sequence[Mapping[str, Any]], int | None], list[str]] | None
    ) = field(default=None, compare=False)

    def elementwise_for(
        self, shared: Mapping[str, Any], per_input: Sequence[Mapping[str, Any]]
    ) -> bool:
        """Whether each output element depends only on the same element of the inputs, for
        a tensor merged with these parameters."""
        if self.elementwise:
            return True
        return self.elementwise_when is not None and self.elementwise_when(shared, per_input)

    def param(self, name: str) -> ParamSpec | None:
        for p in self.params:
            if p.name == name:
                return p
        return None


@dataclass
class MergeContext:
    """Per-tensor information handed to a merge function.

    ``name`` is the output tensor name. ``seed`` is the run's seed (``None`` when the user gave
    none; random methods then use 0 so runs stay reproducible). Use :meth:`generator` for
    randomness: it depends only on the seed and the tensor name, never on thread count,
    device or execution order.
    """

    name: str
    seed: int | None = None
    device: str = "cpu"
    # The safetensors dtype code the engine stores the result in ("BF16", "F32"...). A method may return that
    # dtype directly (rounding once, as the engine would) to spare a float32 copy; None: unknown.
    out_dtype: str | None = None

    def stream_key(self, salt: str = "") -> int:
        """A 63-bit key derived from (seed, tensor name, salt), for counter-based streams
        (:func:`meldkit.methods.sparsify.uniform`)."""
        key = f"{self.seed if self.seed is not None else 0}\x00{self.name}\x00{salt}".encode()
        return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & ((1 << 63) - 1)

    def generator(self, salt: str = "") -> torch.Generator:
        """A CPU generator seeded from (seed, tensor name, salt). Draw on CPU, then move."""
        import torch

        return torch.Generator(device="cpu").manual_seed(self.stream_key(salt))


class MergeFunction(Protocol):
    """Signature of a method's math.

    ``inputs``: same-shape tensors in float32 (float64 when the inputs are), on the math device.
    ``base_index``: position of the base in ``inputs`` or ``None``.
    ``shared``: resolved shared parameters. ``per_input``: one dict per input (the base's dict
    holds only ``per_input``-scoped values). Returns the merged tensor in the same float dtype;
    the caller casts it to the output dtype once.
    """

    def __call__(
        self,
        inputs: Sequence[torch.Tensor],
        base_index: int | None,
        shared: Mapping[str, Any],
        per_input: Sequence[Mapping[str, Any]],
        ctx: MergeContext,
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class FastPath:
    """A faster implementation of a method's formula for the calls it covers.

    ``supports`` receives the arguments of a :class:`MergeFunction` call and says whether
    ``merge`` covers it (e.g. CPU tensors in bf16 or fp32, numba installed); otherwise the
    reference runs. The reference is the truth: a fast path gives the same bytes wherever
    reproducibility depends on it (random masks, selections, tie order) and differs in float
    sums only within a tolerance its tests pin (see docs/adding_a_method.md).
    """

    supports: Callable[
        [
            Sequence[torch.Tensor],
            int | None,
            Mapping[str, Any],
            Sequence[Mapping[str, Any]],
            MergeContext,
        ],
        bool,
    ]
    merge: MergeFunction


_REGISTRY: dict[str, MethodSpec] = {}
_LOADED: dict[tuple[str, bool], MergeFunction] = {}  # (name, with fast path)


def register(spec: MethodSpec) -> MethodSpec:
    """Add a method; a second registration under the same name replaces the first."""
    _REGISTRY[spec.name] = spec
    _LOADED.pop((spec.name, True), None)
    _LOADED.pop((spec.name, False), None)
    return spec


def _ensure_catalog() -> None:
    # Load the built-ins even when a plugin registered its own method first (an emptiness
    # test would then skip them); the import is a dictionary lookup after the first time.
    importlib.import_module("meldkit.methods.catalog")


def get_method(name: str) -> MethodSpec:
    """The spec of method ``name``; an unknown name raises RecipeError with suggestions."""
    _ensure_catalog()
    spec = _REGISTRY.get(name)
    if spec is None:
        raise RecipeError(
            f"unknown merge_method '{name}'.{did_you_mean(name, _REGISTRY)}",
            hint="`meldkit methods` lists every method: " + ", ".join(sorted(_REGISTRY)),
        )
    return spec


def list_methods() -> list[MethodSpec]:
    """All registered methods, sorted by name."""
    _ensure_catalog()
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]


def reference_math_only() -> bool:
    """Whether ``MELDKIT_REFERENCE_MATH`` asks for the reference formulas, with no fast path."""
    return os.environ.get("MELDKIT_REFERENCE_MATH", "") not in ("", "0")


def _import(target: str, default_attr: str) -> Any:
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr or default_attr)


def load_merge_function(spec: MethodSpec) -> MergeFunction:
    """The method's merge function (imported on first use): its reference formula, or, when the
    spec names a fast path, a function that runs the fast path for the calls it supports and
    the reference for the others."""
    fast_impl = None if reference_math_only() else spec.fast_impl
    key = (spec.name, fast_impl is not None)
    fn = _LOADED.get(key)
    if fn is None:
        fn = reference = _import(spec.impl, spec.name)
        if fast_impl is not None:
            fn = _dispatch(reference, _import(fast_impl, spec.name))
        _LOADED[key] = fn
    return fn


def _dispatch(reference: MergeFunction, fast: FastPath) -> MergeFunction:
    def merge(
        inputs: Sequence[torch.Tensor],
        base_index: int | None,
        shared: Mapping[str, Any],
        per_input: Sequence[Mapping[str, Any]],
        ctx: MergeContext,
    ) -> torch.Tensor:
        chosen = (
            fast.merge if fast.supports(inputs, base_index, shared, per_input, ctx) else reference
        )
        return chosen(inputs, base_index, shared, per_input, ctx)

    merge.__doc__ = reference.__doc__
    merge.__name__ = getattr(reference, "__name__", "merge")
    return merge
