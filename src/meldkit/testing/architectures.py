"""The architecture table: one :class:`~meldkit.testing.specs.ArchSpec` entry per ``model_type``.

Each entry is data: tensor templates (names relative to a layer, shapes in size names) and the
``config.json`` keys transformers writes for that model type with default arguments (checked in
tests by a load + re-save round trip). The layouts mirror the transformers release named by
:data:`TRANSFORMERS_LAYOUT_VERSION`. Adding an architecture means adding one entry to
:data:`ARCHS`.
"""

from __future__ import annotations

from typing import Any

from meldkit.testing.blocks import (
    ATTN_SIZES,
    BIASED_QKV_ATTN,
    FUSED_MOE,
    GATED_MLP,
    LAYER_NORMS,
    LLAMA_ATTN,
    LLAMA_EMBED,
    LLAMA_FINAL_NORM,
    O_PROJ,
    PER_EXPERT_MOE,
    QK_NORMS,
    conv1d,
    dense,
    layer_norm,
    norms,
    rope,
)
from meldkit.testing.specs import ArchSpec, Dim, ModelDims, TensorTemplate

#: The transformers release whose ``save_pretrained`` output the templates below reproduce. It is
#: written as ``transformers_version`` so the files are byte-stable whatever is installed.
TRANSFORMERS_LAYOUT_VERSION = "5.24.0"

# GPT-2's learned position table is sized by n_positions; kept small so tiny models stay tiny.
_GPT2_POSITIONS = 128

T = TensorTemplate


def _llama_like(
    model_type: str,
    architecture: str,
    layer: tuple[TensorTemplate, ...],
    config: dict[str, Any],
    **kw: Any,
) -> ArchSpec:
    """Entry for the ``model.embed_tokens`` / ``model.layers.N`` / ``model.norm`` family."""
    return ArchSpec(
        model_type=model_type,
        architecture=architecture,
        layer_prefix="model.layers.{i}.",
        layer_count_key="num_hidden_layers",
        embed="model.embed_tokens.weight",
        lm_head="lm_head.weight",
        tie_default=kw.pop("tie_default", False),
        pre_tensors=LLAMA_EMBED,
        layer_tensors=layer,
        post_tensors=LLAMA_FINAL_NORM,
        config_keys=config,
        **kw,
    )


def _full_attention_layers(d: ModelDims) -> list[str]:
    return ["full_attention"] * d.num_layers


def _alternating_attention_layers(d: ModelDims) -> list[str]:
    # Gemma 2 alternates local (sliding) and global attention, starting with local.
    return ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(d.num_layers)]


def _neox_rope(d: ModelDims) -> dict[str, Any]:
    # Pythia rotates a quarter of each head; tiny heads need at least 2 rotary dims (one
    # complex pair) or the rotary embedding degenerates, so the factor is raised for them.
    rotary = 0.25 if d.head_dim >= 8 else 2.0 / d.head_dim if d.head_dim >= 2 else 1.0
    return rope(partial_rotary_factor=rotary)


# Qwen3's config is Qwen2's plus two keys.
_QWEN2_CONFIG: dict[str, Any] = {
    **ATTN_SIZES,
    "hidden_act": "silu",
    "layer_types": _full_attention_layers,
    "max_position_embeddings": 32768,
    "max_window_layers": 28,
    "rms_norm_eps": 1e-06,
    "rope_parameters": rope(),
    "sliding_window": None,
    "use_sliding_window": False,
}


#: Architecture registry, keyed by the ``arch`` argument (== config ``model_type``).
ARCHS: dict[str, ArchSpec] = {
    "llama": _llama_like(
        "llama",
        "LlamaForCausalLM",
        LLAMA_ATTN + GATED_MLP + LAYER_NORMS,
        {
            **ATTN_SIZES,
            "attention_bias": False,
            "head_dim": Dim("head_dim"),
            "hidden_act": "silu",
            "max_position_embeddings": 2048,
            "mlp_bias": False,
            "pretraining_tp": 1,
            "rms_norm_eps": 1e-06,
            "rope_parameters": rope(),
        },
    ),
    "mistral": _llama_like(
        "mistral",
        "MistralForCausalLM",
        LLAMA_ATTN + GATED_MLP + LAYER_NORMS,
        {
            **ATTN_SIZES,
            "head_dim": Dim("head_dim"),
            "hidden_act": "silu",
            "max_position_embeddings": 131072,
            "rms_norm_eps": 1e-06,
            "rope_parameters": rope(),
            "sliding_window": 4096,
        },
    ),
    "qwen2": _llama_like(
        "qwen2", "Qwen2ForCausalLM", BIASED_QKV_ATTN + GATED_MLP + LAYER_NORMS, _QWEN2_CONFIG
    ),
    "qwen3": _llama_like(
        "qwen3",
        "Qwen3ForCausalLM",
        LLAMA_ATTN + QK_NORMS + GATED_MLP + LAYER_NORMS,
        # Qwen3's default head_dim is 128 regardless of hidden size, so it must be explicit.
        {**_QWEN2_CONFIG, "attention_bias": False, "head_dim": Dim("head_dim")},
    ),
    "gemma2": _llama_like(
        "gemma2",
        "Gemma2ForCausalLM",
        LLAMA_ATTN
        + GATED_MLP
        + LAYER_NORMS
        + norms("pre_feedforward_layernorm", "post_feedforward_layernorm"),
        {
            **ATTN_SIZES,
            "attention_bias": False,
            "attn_logit_softcapping": 50.0,
            "final_logit_softcapping": 30.0,
            "head_dim": Dim("head_dim"),  # default 256 would not match hidden // heads
            "hidden_activation": "gelu_pytorch_tanh",
            "layer_types": _alternating_attention_layers,
            "max_position_embeddings": 8192,
            "query_pre_attn_scalar": 256,
            "rms_norm_eps": 1e-06,
            "rope_parameters": rope(),
            "sliding_window": 4096,
            "use_bidirectional_attention": None,
        },
        tie_default=True,
        norm_center=0.0,
    ),
    "phi3": _llama_like(
        "phi3",
        "Phi3ForCausalLM",
        (
            O_PROJ,
            T("self_attn.qkv_proj.weight", ("qkv", "hidden")),
            T("mlp.gate_up_proj.weight", ("2*intermediate", "hidden")),
            T("mlp.down_proj.weight", ("hidden", "intermediate")),
            *LAYER_NORMS,
        ),
        {
            **ATTN_SIZES,
            "embd_pdrop": 0.0,
            "hidden_act": "silu",
            "max_position_embeddings": 4096,
            "original_max_position_embeddings": 4096,
            "resid_pdrop": 0.0,
            "rms_norm_eps": 1e-05,
            "rope_parameters": rope(partial_rotary_factor=1.0),
            "sliding_window": None,
        },
    ),
    "mixtral": _llama_like(
        "mixtral",
        "MixtralForCausalLM",
        LLAMA_ATTN + PER_EXPERT_MOE + LAYER_NORMS,
        {
            **ATTN_SIZES,
            "head_dim": None,
            "hidden_act": "silu",
            "max_position_embeddings": 131072,
            "num_experts_per_tok": 2,
            "num_local_experts": Dim("experts"),
            "output_router_logits": False,
            "rms_norm_eps": 1e-05,
            "rope_parameters": rope(1000000.0),
            "router_aux_loss_coef": 0.001,
            "router_jitter_noise": 0.0,
            "sliding_window": None,
        },
        fused_moe_layer_tensors=LLAMA_ATTN + FUSED_MOE + LAYER_NORMS,
    ),
    "gpt2": ArchSpec(
        model_type="gpt2",
        architecture="GPT2LMHeadModel",
        layer_prefix="transformer.h.{i}.",
        layer_count_key="n_layer",
        embed="transformer.wte.weight",
        lm_head="lm_head.weight",
        tie_default=True,
        pre_tensors=(
            T("transformer.wte.weight", ("vocab", "hidden"), "embed"),
            T("transformer.wpe.weight", (_GPT2_POSITIONS, "hidden"), "embed"),
        ),
        layer_tensors=(
            *layer_norm("ln_1"),
            *conv1d("attn.c_attn", "hidden", "3*hidden"),
            *conv1d("attn.c_proj", "hidden", "hidden"),
            *layer_norm("ln_2"),
            *conv1d("mlp.c_fc", "hidden", "intermediate"),
            *conv1d("mlp.c_proj", "intermediate", "hidden"),
        ),
        post_tensors=layer_norm("transformer.ln_f"),
        config_keys={
            "activation_function": "gelu_new",
            "add_cross_attention": False,
            "attn_pdrop": 0.1,
            "embd_pdrop": 0.1,
            "initializer_range": 0.02,
            "layer_norm_epsilon": 1e-05,
            "n_embd": Dim("hidden"),
            "n_head": Dim("heads"),
            "n_inner": Dim("intermediate"),
            "n_layer": Dim("layers"),
            "n_positions": _GPT2_POSITIONS,
            "reorder_and_upcast_attn": False,
            "resid_pdrop": 0.1,
            "scale_attn_by_inverse_layer_idx": False,
            "scale_attn_weights": True,
            "summary_activation": None,
            "summary_first_dropout": 0.1,
            "summary_proj_to_labels": True,
            "summary_type": "cls_index",
            "summary_use_proj": True,
        },
        mha_only=True,
    ),
    "gpt_neox": ArchSpec(
        model_type="gpt_neox",
        architecture="GPTNeoXForCausalLM",
        layer_prefix="gpt_neox.layers.{i}.",
        layer_count_key="num_hidden_layers",
        embed="gpt_neox.embed_in.weight",
        # transformers v5 calls the module lm_head but saves it under its historical name.
        lm_head="embed_out.weight",
        tie_default=False,
        pre_tensors=(T("gpt_neox.embed_in.weight", ("vocab", "hidden"), "embed"),),
        layer_tensors=(
            *layer_norm("input_layernorm"),
            *layer_norm("post_attention_layernorm"),
            *dense("attention.query_key_value", "3*hidden", "hidden"),
            *dense("attention.dense", "hidden", "hidden"),
            *dense("mlp.dense_h_to_4h", "intermediate", "hidden"),
            *dense("mlp.dense_4h_to_h", "hidden", "intermediate"),
        ),
        post_tensors=layer_norm("gpt_neox.final_layer_norm"),
        config_keys={
            # GPT-NeoX has no GQA and no num_key_value_heads key.
            **{k: v for k, v in ATTN_SIZES.items() if k != "num_key_value_heads"},
            "attention_bias": True,
            "classifier_dropout": 0.1,
            "hidden_act": "gelu",
            "hidden_dropout": 0.0,
            "is_decoder": False,
            "layer_norm_eps": 1e-05,
            "max_position_embeddings": 2048,
            "rope_parameters": _neox_rope,
            "use_parallel_residual": True,
        },
        mha_only=True,
    ),
}


def lookup(arch: str) -> ArchSpec:
    """The :data:`ARCHS` entry for ``arch``, or a ``ValueError`` naming the choices."""
    try:
        return ARCHS[arch]
    except KeyError:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}") from None
