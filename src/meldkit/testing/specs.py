"""The vocabulary architecture entries are written in, and how an entry becomes tensors.

An architecture is described as data (:class:`ArchSpec`): :class:`TensorTemplate` rows whose
shapes name sizes (``"hidden"``, ``"kv"`` ...) instead of numbers, and ``config.json`` keys whose
size-dependent values are :class:`Dim` markers. This module turns such an entry plus concrete
:class:`ModelDims` into the :class:`TensorSpec` list a checkpoint holds and the config body;
:mod:`meldkit.testing.architectures` holds the entries themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelDims:
    """The sizes an architecture's tensors and config are built from."""

    num_layers: int
    hidden: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    num_experts: int

    @property
    def head_dim(self) -> int:
        """Per-head width; every registered architecture uses ``hidden // heads``."""
        return self.hidden // self.heads


@dataclass(frozen=True)
class TensorSpec:
    """One tensor a checkpoint holds.

    ``kind`` picks the init statistics (``"linear"``/``"embed"``: N(0, 0.02); ``"norm"``: the
    architecture's norm centre + N(0, 0.02); ``"bias"``: N(0, 0.02)). Values are seeded by
    ``seed_key`` (default: ``name``) so that a tensor's values do not depend on which other
    tensors exist; ``parts`` builds a fused tensor by stacking (outer tuple, new dim 0) the
    concatenation (inner tuple, along dim 0) of per-part tensors seeded by those part names --
    that is how the fused MoE layout gets exactly the values of the per-expert layout.
    """

    name: str
    shape: tuple[int, ...]
    kind: str = "linear"
    seed_key: str | None = None
    parts: tuple[tuple[str, ...], ...] = ()


#: The size names a :class:`TensorTemplate` shape or a :class:`Dim` may use.
SIZES: dict[str, Callable[[ModelDims], int]] = {
    "layers": lambda d: d.num_layers,
    "hidden": lambda d: d.hidden,
    "intermediate": lambda d: d.intermediate,
    "vocab": lambda d: d.vocab,
    "heads": lambda d: d.heads,
    "kv_heads": lambda d: d.kv_heads,
    "experts": lambda d: d.num_experts,
    "head_dim": lambda d: d.head_dim,
    "q": lambda d: d.heads * d.head_dim,
    "kv": lambda d: d.kv_heads * d.head_dim,
    "qkv": lambda d: (d.heads + 2 * d.kv_heads) * d.head_dim,
    "2*intermediate": lambda d: 2 * d.intermediate,
    "3*hidden": lambda d: 3 * d.hidden,
}


@dataclass(frozen=True)
class Dim:
    """A ``config.json`` value that is one of the model's sizes (a key of :data:`SIZES`)."""

    size: str


@dataclass(frozen=True)
class TensorTemplate:
    """One tensor of an architecture entry, before the sizes are known.

    ``name`` (and ``seed_key``, ``parts``) are relative to the layer prefix for layer tensors.
    ``shape`` holds :data:`SIZES` names or literal ints. A name containing ``{e}`` is a
    per-expert tensor: a run of consecutive per-expert templates is written expert by expert
    (``experts.0.w1, experts.0.w2, ..., experts.1.w1``), the order ``save_pretrained`` uses.
    ``parts`` is the per-expert group of a fused tensor (names with ``{e}``); it expands to one
    group per expert, giving :attr:`TensorSpec.parts`.
    """

    name: str
    shape: tuple[str | int, ...]
    kind: str = "linear"
    seed_key: str | None = None
    parts: tuple[str, ...] = ()


def _size(dims: ModelDims, size: str | int) -> int:
    """A shape entry's value: a literal, or a :data:`SIZES` name looked up in ``dims``."""
    return size if isinstance(size, int) else SIZES[size](dims)


def _resolve(
    dims: ModelDims, templates: tuple[TensorTemplate, ...], prefix: str
) -> list[TensorSpec]:
    """``templates`` as tensors under ``prefix``, per-expert runs expanded expert by expert."""
    out: list[TensorSpec] = []
    run: list[TensorTemplate] = []  # pending per-expert templates

    def flush() -> None:
        for e in range(dims.num_experts if run else 0):
            out.extend(_instantiate(dims, t, prefix, e) for t in run)
        run.clear()

    for t in templates:
        if "{e}" in t.name:
            run.append(t)
            continue
        flush()
        out.append(_instantiate(dims, t, prefix, None))
    flush()
    return out


def _instantiate(dims: ModelDims, t: TensorTemplate, prefix: str, expert: int | None) -> TensorSpec:
    """One template as a tensor (of expert ``expert`` for a per-expert template)."""
    name = t.name if expert is None else t.name.format(e=expert)
    experts = range(dims.num_experts) if t.parts else range(0)
    return TensorSpec(
        prefix + name,
        tuple(_size(dims, s) for s in t.shape),
        t.kind,
        None if t.seed_key is None else prefix + t.seed_key,
        tuple(tuple(prefix + p.format(e=e) for p in t.parts) for e in experts),
    )


def _config_value(dims: ModelDims, value: Any) -> Any:
    """``value`` with :class:`Dim` markers and rules (functions of the dims) filled in; nested
    dicts are rebuilt, so callers may mutate the result without touching the entry."""
    if isinstance(value, Dim):
        return SIZES[value.size](dims)
    if isinstance(value, Mapping):
        return {k: _config_value(dims, v) for k, v in value.items()}
    if callable(value):
        return value(dims)
    return value


@dataclass(frozen=True, kw_only=True)
class ArchSpec:
    """How one ``model_type`` is laid out on disk, as data.

    The tensors before the layers (``pre_tensors``), one layer's tensors (``layer_tensors``;
    they get the layer prefix, e.g. ``"model.layers.3."``), the tensors after the layers
    (``post_tensors``), the output projection name, and ``config_keys``: the
    architecture-specific ``config.json`` keys, whose values are constants, :class:`Dim` markers
    or functions of the :class:`ModelDims` (the common keys -- ``architectures``,
    ``model_type``, ``vocab_size``, ``dtype``, token ids, ``tie_word_embeddings``... -- are added
    by the writer). MoE entries also give ``fused_moe_layer_tensors``, the layer in transformers
    v5's fused runtime layout, written when ``legacy_moe_names=False``.
    """

    model_type: str
    architecture: str
    layer_prefix: str
    layer_count_key: str
    embed: str
    lm_head: str
    tie_default: bool
    pre_tensors: tuple[TensorTemplate, ...]
    layer_tensors: tuple[TensorTemplate, ...]
    post_tensors: tuple[TensorTemplate, ...]
    # Left out of the hash: a dict field would otherwise make the frozen entries unhashable.
    config_keys: Mapping[str, Any] = field(hash=False)
    fused_moe_layer_tensors: tuple[TensorTemplate, ...] = ()
    # Gemma-style RMSNorm multiplies by (1 + weight), so its weights sit around 0, not 1.
    norm_center: float = 1.0
    # GPT-2 / GPT-NeoX have no grouped-query attention: kv_heads is forced to heads.
    mha_only: bool = False

    @property
    def is_moe(self) -> bool:
        """Whether layers hold experts (and so have a legacy and a fused layout)."""
        return bool(self.fused_moe_layer_tensors)

    def pre(self, dims: ModelDims) -> list[TensorSpec]:
        """The tensors before the layers (embeddings)."""
        return _resolve(dims, self.pre_tensors, "")

    def layer(self, dims: ModelDims, prefix: str, legacy_moe_names: bool) -> list[TensorSpec]:
        """One layer's tensors, named under ``prefix``."""
        fused = self.is_moe and not legacy_moe_names
        return _resolve(dims, self.fused_moe_layer_tensors if fused else self.layer_tensors, prefix)

    def post(self, dims: ModelDims) -> list[TensorSpec]:
        """The tensors after the layers (final norm)."""
        return _resolve(dims, self.post_tensors, "")

    def config(self, dims: ModelDims) -> dict[str, Any]:
        """The architecture-specific ``config.json`` keys at these sizes (a fresh dict)."""
        return {k: _config_value(dims, v) for k, v in self.config_keys.items()}

    def tensors(self, dims: ModelDims, *, tie: bool, legacy_moe_names: bool) -> list[TensorSpec]:
        """All tensors in model order (embeddings, layers, final norm, untied head)."""
        out = self.pre(dims)
        for i in range(dims.num_layers):
            out += self.layer(dims, self.layer_prefix.format(i=i), legacy_moe_names)
        out += self.post(dims)
        if not tie:
            out.append(TensorSpec(self.lm_head, (dims.vocab, dims.hidden), "embed"))
        return out

    def dims(
        self,
        *,
        num_layers: int,
        hidden: int,
        intermediate: int,
        vocab: int,
        heads: int,
        kv_heads: int,
        num_experts: int,
    ) -> ModelDims:
        """Validated :class:`ModelDims` for this architecture (MHA-only ones ignore
        ``kv_heads``)."""
        if self.mha_only:
            kv_heads = heads
        if min(num_layers, hidden, intermediate, vocab, heads, kv_heads, num_experts) < 1:
            raise ValueError("all model dimensions must be positive")
        if hidden % heads:
            raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
        if heads % kv_heads:
            raise ValueError(f"heads ({heads}) must be divisible by kv_heads ({kv_heads})")
        return ModelDims(num_layers, hidden, intermediate, vocab, heads, kv_heads, num_experts)
