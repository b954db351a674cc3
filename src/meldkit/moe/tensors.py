"""The output tensors of a MoE build: where each comes from (headers only, no torch).

Each layer's MLP becomes a router (computed from the prompts) and one expert per recipe
expert, read from that expert's dense ``mlp.{gate,up,down}_proj.weight``. Everything else is
the base model's tensor under the same name. A fused expert tensor is written one expert at
a time (a block of its first dimension), so memory holds one expert's projection, never the
whole layer's experts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from meldkit.io.writer import OutputTensorSpec
from meldkit.moe.architectures import PROJECTIONS, ExpertLayout, OutputArch
from meldkit.plan.architecture import split_layer_name

__all__ = ["Source", "Block", "MoeTensor", "mlp_name", "layer_tensors"]

TensorKind = Literal["copy", "expert", "router", "shared_gate", "zeros"]


@dataclass(frozen=True)
class Source:
    """One input tensor: the model's key in the plan and the tensor's name there."""

    model: str
    name: str


@dataclass(frozen=True)
class Block:
    """Part of an output tensor: ``parts`` concatenated along dim 0 (gate_proj, up_proj for a
    fused gate_up), written at index ``row`` of a fused tensor (None: the whole tensor).
    ``expert`` indexes the plan's experts (routed, then shared) for noise and residual scale."""

    parts: tuple[Source, ...]
    projections: tuple[str, ...]
    expert: int
    layer: int
    row: int | None = None


@dataclass(frozen=True)
class MoeTensor:
    """One output tensor: its spec, what it is made of and (for routers) its layer."""

    spec: OutputTensorSpec
    kind: TensorKind
    blocks: tuple[Block, ...] = ()
    source: Source | None = None  # kind "copy"
    layer: int | None = None

    @property
    def name(self) -> str:
        return self.spec.name


def mlp_name(prefix: str, layer: int, projection: str) -> str:
    """A dense model's MLP weight: ``model.layers.3.mlp.up_proj.weight``."""
    return f"{prefix}{layer}.mlp.{projection}.weight"


def _spec(name: str, dtype: str, shape: tuple[int, ...]) -> OutputTensorSpec:
    return OutputTensorSpec(name, dtype, shape)


def layer_tensors(
    arch: OutputArch,
    layout: ExpertLayout,
    prefix: str,
    layer: int,
    experts: list[str],
    n_routed: int,
    mlp_shapes: dict[str, tuple[int, ...]],
    dtype: str,
) -> list[MoeTensor]:
    """The MoE tensors of one layer (router, experts, shared expert and its gate).

    ``experts`` holds the model key of every expert, routed then shared; ``mlp_shapes`` the
    dense shapes by projection: gate_proj/up_proj (intermediate, hidden), down_proj
    (hidden, intermediate).
    """
    at = f"{prefix}{layer}."
    inter, hidden = mlp_shapes["gate_proj"]
    out = [
        MoeTensor(_spec(at + arch.router(layout), dtype, (n_routed, hidden)), "router", layer=layer)
    ]

    def block(e: int, projections: tuple[str, ...], row: int | None = None) -> Block:
        parts = tuple(Source(experts[e], mlp_name(prefix, layer, p)) for p in projections)
        return Block(parts, projections, e, layer, row)

    if arch.fuses(layout):
        gate_up = tuple(block(e, ("gate_proj", "up_proj"), e) for e in range(n_routed))
        down = tuple(block(e, ("down_proj",), e) for e in range(n_routed))
        # (experts, 2 x intermediate, hidden) and (experts, hidden, intermediate)
        out.append(
            MoeTensor(
                _spec(at + "mlp.experts.gate_up_proj", dtype, (n_routed, 2 * inter, hidden)),
                "expert",
                gate_up,
            )
        )
        out.append(
            MoeTensor(
                _spec(at + "mlp.experts.down_proj", dtype, (n_routed, hidden, inter)),
                "expert",
                down,
            )
        )
    else:
        for e in range(n_routed):
            for p in PROJECTIONS:
                name = at + arch.expert_tensor(e, p)
                out.append(
                    MoeTensor(_spec(name, dtype, mlp_shapes[p]), "expert", (block(e, (p,)),))
                )
    for s in range(n_routed, len(experts)):
        for p in PROJECTIONS:
            name = at + arch.shared_tensor(p)
            out.append(MoeTensor(_spec(name, dtype, mlp_shapes[p]), "expert", (block(s, (p,)),)))
        if arch.name == "qwen":
            gate = at + "mlp.shared_expert_gate.weight"
            out.append(MoeTensor(_spec(gate, dtype, (1, hidden)), "shared_gate", layer=layer))
    return out


def is_mlp_tensor(name: str) -> bool:
    """Whether ``name`` is a layer's dense MLP tensor (replaced by the experts)."""
    parsed = split_layer_name(name)
    return parsed is not None and parsed.suffix.startswith("mlp.")
