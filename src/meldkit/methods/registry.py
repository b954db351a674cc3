"""The merge-method registry: torch-free method descriptions and lazy loading of their math.

A method is two things:

* a :class:`MethodSpec` (name, parameters with scopes and defaults, input contract, paper),
  listed in :mod:`meldkit.methods.catalog`. Specs are plain data, so planning and
  ``meldkit methods`` never import torch;
* a merge function in its own module (``impl = "meldkit.methods.linear:merge"``) with the
  signature of :class:`MergeFunction`, imported only when a tensor is computed.
"""

from __future__ import annotations

import hashlib
import importlib
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
    # The merge function accepts inputs in their stored floating dtype (bf16, fp16) and does
    # its math in float32 (float64) itself, e.g. with `out_f32.add_(x_bf16, alpha=w)`; the
    # engine then skips the separate upcast pass.
    native_inputs: bool = False
    summary: str = ""
    check: Callable[[Mapping[str, Any], Sequence[Mapping[str, Any]], int | None], list[str]] | None = field(
        default=None, compare=False
    )

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


_REGISTRY: dict[str, MethodSpec] = {}
_LOADED: dict[str, MergeFunction] = {}


def register(spec: MethodSpec) -> MethodSpec:
    """Add a method; a second registration under the same name replaces the first."""
    _REGISTRY[spec.name] = spec
    _LOADED.pop(spec.name, None)
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


def load_merge_function(spec: MethodSpec) -> MergeFunction:
    """Import the method's math (``module:function``) on first use."""
    fn = _LOADED.get(spec.name)
    if fn is None:
        module_name, _, attr = spec.impl.partition(":")
        fn = getattr(importlib.import_module(module_name), attr or "merge")
        _LOADED[spec.name] = fn
    return fn
