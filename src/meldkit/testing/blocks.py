"""The shared pieces the architecture entries are assembled from.

Tensor templates for the attention, MLP, norm and mixture-of-experts blocks that several
architectures have in common (names relative to a layer, shapes in
:data:`~meldkit.testing.specs.SIZES` names), and the ``config.json`` values they share. The
entries themselves are in :mod:`meldkit.testing.architectures`.
"""

from __future__ import annotations

from typing import Any

from meldkit.testing.specs import Dim, TensorTemplate

T = TensorTemplate


def norms(*names: str) -> tuple[TensorTemplate, ...]:
    """RMSNorm weights of width ``hidden``, one per name."""
    return tuple(T(f"{n}.weight", ("hidden",), "norm") for n in names)


def layer_norm(name: str) -> tuple[TensorTemplate, ...]:
    """A LayerNorm: weight (centred on 1) and bias."""
    return (T(f"{name}.weight", ("hidden",), "norm"), T(f"{name}.bias", ("hidden",), "bias"))


def dense(name: str, out_size: str, in_size: str) -> tuple[TensorTemplate, ...]:
    """An ``nn.Linear`` with bias, stored [out, in]."""
    return (T(f"{name}.weight", (out_size, in_size)), T(f"{name}.bias", (out_size,), "bias"))


def conv1d(name: str, in_size: str, out_size: str) -> tuple[TensorTemplate, ...]:
    """GPT-2's ``Conv1D``: weight stored transposed, [in, out]."""
    return (T(f"{name}.weight", (in_size, out_size)), T(f"{name}.bias", (out_size,), "bias"))


# --- the Llama family (model.embed_tokens / model.layers.N / model.norm) ---------------------

LLAMA_EMBED = (T("model.embed_tokens.weight", ("vocab", "hidden"), "embed"),)
LLAMA_FINAL_NORM = norms("model.norm")

O_PROJ = T("self_attn.o_proj.weight", ("hidden", "q"))
LLAMA_ATTN = (
    T("self_attn.q_proj.weight", ("q", "hidden")),
    T("self_attn.k_proj.weight", ("kv", "hidden")),
    T("self_attn.v_proj.weight", ("kv", "hidden")),
    O_PROJ,
)
# Qwen2: biases on q/k/v (each right after its weight, as the module registers them), none on o.
BIASED_QKV_ATTN = (
    *dense("self_attn.q_proj", "q", "hidden"),
    *dense("self_attn.k_proj", "kv", "hidden"),
    *dense("self_attn.v_proj", "kv", "hidden"),
    O_PROJ,
)
# Qwen3: per-head RMSNorm on queries and keys.
QK_NORMS = (
    T("self_attn.q_norm.weight", ("head_dim",), "norm"),
    T("self_attn.k_norm.weight", ("head_dim",), "norm"),
)
GATED_MLP = (
    T("mlp.gate_proj.weight", ("intermediate", "hidden")),
    T("mlp.up_proj.weight", ("intermediate", "hidden")),
    T("mlp.down_proj.weight", ("hidden", "intermediate")),
)
LAYER_NORMS = norms("input_layernorm", "post_attention_layernorm")

# --- mixture of experts ------------------------------------------------------------------------

_MOE = "block_sparse_moe."
# As save_pretrained writes it by default: the router, then each expert's w1/w2/w3.
PER_EXPERT_MOE = (
    T(f"{_MOE}gate.weight", ("experts", "hidden")),
    T(f"{_MOE}experts.{{e}}.w1.weight", ("intermediate", "hidden")),
    T(f"{_MOE}experts.{{e}}.w2.weight", ("hidden", "intermediate")),
    T(f"{_MOE}experts.{{e}}.w3.weight", ("intermediate", "hidden")),
)
# transformers v5's runtime layout (what save_pretrained(save_original_format=False) writes):
# experts stacked on dim 0, gate (w1) and up (w3) concatenated on dim 1. The parts are seeded
# by the per-expert names so both layouts hold the same numbers.
FUSED_MOE = (
    T("mlp.gate.weight", ("experts", "hidden"), seed_key=f"{_MOE}gate.weight"),
    T(
        "mlp.experts.gate_up_proj",
        ("experts", "2*intermediate", "hidden"),
        parts=(f"{_MOE}experts.{{e}}.w1.weight", f"{_MOE}experts.{{e}}.w3.weight"),
    ),
    T(
        "mlp.experts.down_proj",
        ("experts", "hidden", "intermediate"),
        parts=(f"{_MOE}experts.{{e}}.w2.weight",),
    ),
)

# --- config values -----------------------------------------------------------------------------


def rope(theta: float = 10000.0, **extra: Any) -> dict[str, Any]:
    """A default (unscaled) ``rope_parameters`` value."""
    return {**extra, "rope_theta": theta, "rope_type": "default"}


#: The size keys of every config that names its sizes the Llama way.
ATTN_SIZES: dict[str, Any] = {
    "hidden_size": Dim("hidden"),
    "intermediate_size": Dim("intermediate"),
    "num_attention_heads": Dim("heads"),
    "num_hidden_layers": Dim("layers"),
    "num_key_value_heads": Dim("kv_heads"),
    "initializer_range": 0.02,
    "attention_dropout": 0.0,
}
