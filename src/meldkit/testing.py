"""Tiny, deterministic Hugging Face checkpoints for tests, demos and plugin authors.

Everything here writes folders that look exactly like what ``transformers``' ``save_pretrained``
produces for a given architecture (same ``config.json`` keys, same tensor names and shapes, same
shard/index layout), but with a handful of kilobytes of deterministic random weights, so merge
code can be exercised end to end in milliseconds.

The module deliberately imports only ``torch``, ``safetensors`` and the standard library: it must
work in environments without ``transformers``/``tokenizers`` (meldkit's core does not depend on
them), and it must not pay their import time in every test.

Public API:

* :func:`make_tiny_model` -- one model folder (or a "fine-tune" of an existing one).
* :func:`make_model_family` -- a base plus ``n`` fine-tunes of it.
* :func:`make_header_only_model` -- a 70B-shaped sharded checkpoint that costs no disk or RAM.
* :func:`write_tiny_tokenizer` -- a hand-written BPE ``tokenizer.json`` + config files.
* :func:`read_model` -- load every tensor of a folder (safetensors or ``.bin``).
* :func:`expected_tensor_shapes` -- the ``{name: shape}`` an architecture would have.
* :data:`ARCHS` -- the architecture registry (:class:`ArchSpec` entries).

The layouts mirror the transformers release named by :data:`TRANSFORMERS_LAYOUT_VERSION`.
Notable v5 behaviour reproduced here: configs carry ``dtype`` (not ``torch_dtype``) and ``rope_parameters``; sharded indexes carry
``total_parameters`` next to ``total_size``; Mixtral's in-memory modules are fused
(``mlp.experts.gate_up_proj``) but ``save_pretrained`` reverts them to the per-expert
``block_sparse_moe.experts.N.w1/w2/w3`` layout by default, and GPT-NeoX's ``lm_head`` is saved
as ``embed_out``.
"""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

__all__ = [
    "ARCHS",
    "ArchSpec",
    "ModelDims",
    "TensorSpec",
    "TRANSFORMERS_LAYOUT_VERSION",
    "expected_tensor_shapes",
    "make_header_only_model",
    "make_model_family",
    "make_tiny_model",
    "read_model",
    "write_tiny_tokenizer",
]

#: The transformers release whose ``save_pretrained`` output the templates below reproduce. It is
#: written as ``transformers_version`` so the files are byte-stable whatever is installed.
TRANSFORMERS_LAYOUT_VERSION = "5.24.0"

# Token ids of the hand-written tokenizer; configs point at them so bos/eos are always in range.
_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
_UNK_ID, _BOS_ID, _EOS_ID = 0, 1, 2

# std of the random weights; 0.02 is the usual ``initializer_range``, which keeps tiny models'
# activations and logits small and finite.
_INIT_STD = 0.02

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}
# Canonical spelling used in config.json ("dtype") and safetensors headers.
_DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float32: "float32",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
}
_ST_DTYPES: dict[torch.dtype, tuple[str, int]] = {
    torch.float32: ("F32", 4),
    torch.float16: ("F16", 2),
    torch.bfloat16: ("BF16", 2),
}

# Weight files this module writes; a folder is cleared of these before rewriting so a re-run
# with a different shard count never leaves stale shards behind.
_WEIGHT_GLOBS = (
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model-*-of-*.bin",
    "pytorch_model.bin.index.json",
)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class ArchSpec:
    """How one ``model_type`` is laid out on disk.

    Adding an architecture means adding one of these to :data:`ARCHS`: the tensors before the
    layers (``pre``), one layer's tensors (``layer``; gets the layer prefix, e.g.
    ``"model.layers.3."``), the tensors after the layers (``post``), the output projection name,
    and ``config`` returning the architecture-specific ``config.json`` keys (the common ones --
    ``architectures``, ``model_type``, ``vocab_size``, ``dtype``, token ids,
    ``tie_word_embeddings``... -- are added by the writer).
    """

    model_type: str
    architecture: str
    layer_prefix: str
    layer_count_key: str
    embed: str
    lm_head: str
    tie_default: bool
    pre: Callable[[ModelDims], list[TensorSpec]]
    layer: Callable[[ModelDims, str, bool], list[TensorSpec]]
    post: Callable[[ModelDims], list[TensorSpec]]
    config: Callable[[ModelDims], dict[str, Any]]
    # Gemma-style RMSNorm multiplies by (1 + weight), so its weights sit around 0, not 1.
    norm_center: float = 1.0
    # GPT-2 / GPT-NeoX have no grouped-query attention: kv_heads is forced to heads.
    mha_only: bool = False
    is_moe: bool = False

    def tensors(self, dims: ModelDims, *, tie: bool, legacy_moe_names: bool) -> list[TensorSpec]:
        """All tensors in model order (embeddings, layers, final norm, untied head)."""
        out = list(self.pre(dims))
        for i in range(dims.num_layers):
            out += self.layer(dims, self.layer_prefix.format(i=i), legacy_moe_names)
        out += self.post(dims)
        if not tie:
            out.append(TensorSpec(self.lm_head, (dims.vocab, dims.hidden), "embed"))
        return out


def _rope(theta: float = 10000.0, **extra: Any) -> dict[str, Any]:
    return {**extra, "rope_theta": theta, "rope_type": "default"}


def _llama_attn(
    d: ModelDims, p: str, *, bias: bool = False, qk_norm: bool = False
) -> list[TensorSpec]:
    q, kv = d.heads * d.head_dim, d.kv_heads * d.head_dim
    out = [TensorSpec(f"{p}self_attn.q_proj.weight", (q, d.hidden))]
    if bias:
        out.append(TensorSpec(f"{p}self_attn.q_proj.bias", (q,), "bias"))
    out.append(TensorSpec(f"{p}self_attn.k_proj.weight", (kv, d.hidden)))
    if bias:
        out.append(TensorSpec(f"{p}self_attn.k_proj.bias", (kv,), "bias"))
    out.append(TensorSpec(f"{p}self_attn.v_proj.weight", (kv, d.hidden)))
    if bias:
        out.append(TensorSpec(f"{p}self_attn.v_proj.bias", (kv,), "bias"))
    out.append(TensorSpec(f"{p}self_attn.o_proj.weight", (d.hidden, q)))
    if qk_norm:
        out.append(TensorSpec(f"{p}self_attn.q_norm.weight", (d.head_dim,), "norm"))
        out.append(TensorSpec(f"{p}self_attn.k_norm.weight", (d.head_dim,), "norm"))
    return out


def _gated_mlp(d: ModelDims, p: str) -> list[TensorSpec]:
    return [
        TensorSpec(f"{p}mlp.gate_proj.weight", (d.intermediate, d.hidden)),
        TensorSpec(f"{p}mlp.up_proj.weight", (d.intermediate, d.hidden)),
        TensorSpec(f"{p}mlp.down_proj.weight", (d.hidden, d.intermediate)),
    ]


def _norms(d: ModelDims, p: str, *names: str) -> list[TensorSpec]:
    return [TensorSpec(f"{p}{n}.weight", (d.hidden,), "norm") for n in names]


def _ln(d: ModelDims, name: str) -> list[TensorSpec]:
    """A LayerNorm: weight (centred on 1) and bias."""
    return [
        TensorSpec(f"{name}.weight", (d.hidden,), "norm"),
        TensorSpec(f"{name}.bias", (d.hidden,), "bias"),
    ]


def _dense(name: str, out_f: int, in_f: int) -> list[TensorSpec]:
    """An ``nn.Linear`` with bias, stored [out, in]."""
    return [
        TensorSpec(f"{name}.weight", (out_f, in_f)),
        TensorSpec(f"{name}.bias", (out_f,), "bias"),
    ]


def _conv1d(name: str, in_f: int, out_f: int) -> list[TensorSpec]:
    """GPT-2's ``Conv1D``: weight stored transposed, [in, out]."""
    return [
        TensorSpec(f"{name}.weight", (in_f, out_f)),
        TensorSpec(f"{name}.bias", (out_f,), "bias"),
    ]


def _model_pre(d: ModelDims) -> list[TensorSpec]:
    return [TensorSpec("model.embed_tokens.weight", (d.vocab, d.hidden), "embed")]


def _model_post(d: ModelDims) -> list[TensorSpec]:
    return [TensorSpec("model.norm.weight", (d.hidden,), "norm")]


def _llama_layer(d: ModelDims, p: str, legacy: bool) -> list[TensorSpec]:
    return (
        _llama_attn(d, p)
        + _gated_mlp(d, p)
        + _norms(d, p, "input_layernorm", "post_attention_layernorm")
    )


def _qwen2_layer(d: ModelDims, p: str, legacy: bool) -> list[TensorSpec]:
    return (
        _llama_attn(d, p, bias=True)
        + _gated_mlp(d, p)
        + _norms(d, p, "input_layernorm", "post_attention_layernorm")
    )


def _qwen3_layer(d: ModelDims, p: str, legacy: bool) -> list[TensorSpec]:
    return (
        _llama_attn(d, p, qk_norm=True)
        + _gated_mlp(d, p)
        + _norms(d, p, "input_layernorm", "post_attention_layernorm")
    )


def _gemma2_layer(d: ModelDims, p: str, legacy: bool) -> list[TensorSpec]:
    return (
        _llama_attn(d, p)
        + _gated_mlp(d, p)
        + _norms(
            d,
            p,
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
        )
    )


def _phi3_layer(d: ModelDims, p: str, legacy: bool) -> list[TensorSpec]:
    qkv = (d.heads + 2 * d.kv_heads) * d.head_dim
    return [
        TensorSpec(f"{p}self_attn.o_proj.weight", (d.hidden, d.heads * d.head_dim)),
        TensorSpec(f"{p}self_attn.qkv_proj.weight", (qkv, d.hidden)),
        TensorSpec(f"{p}mlp.gate_up_proj.weight", (2 * d.intermediate, d.hidden)),
        TensorSpec(f"{p}mlp.down_proj.weight", (d.hidden, d.intermediate)),
        *_norms(d, p, "input_layernorm", "post_attention_layernorm"),
    ]


def _mixtral_layer(d: ModelDims, p: str, legacy: bool) -> list[TensorSpec]:
    moe = f"{p}block_sparse_moe."
    e_range = range(d.num_experts)
    if legacy:
        experts: list[TensorSpec] = []
        for e in e_range:
            experts += [
                TensorSpec(f"{moe}experts.{e}.w1.weight", (d.intermediate, d.hidden)),
                TensorSpec(f"{moe}experts.{e}.w2.weight", (d.hidden, d.intermediate)),
                TensorSpec(f"{moe}experts.{e}.w3.weight", (d.intermediate, d.hidden)),
            ]
        moe_tensors = [TensorSpec(f"{moe}gate.weight", (d.num_experts, d.hidden)), *experts]
    else:
        # transformers v5's runtime layout (what save_pretrained(save_original_format=False)
        # writes): experts stacked on dim 0, gate (w1) and up (w3) concatenated on dim 1. The
        # parts are seeded by the legacy names so both layouts hold the same numbers.
        moe_tensors = [
            TensorSpec(
                f"{p}mlp.gate.weight", (d.num_experts, d.hidden), seed_key=f"{moe}gate.weight"
            ),
            TensorSpec(
                f"{p}mlp.experts.gate_up_proj",
                (d.num_experts, 2 * d.intermediate, d.hidden),
                parts=tuple(
                    (f"{moe}experts.{e}.w1.weight", f"{moe}experts.{e}.w3.weight") for e in e_range
                ),
            ),
            TensorSpec(
                f"{p}mlp.experts.down_proj",
                (d.num_experts, d.hidden, d.intermediate),
                parts=tuple((f"{moe}experts.{e}.w2.weight",) for e in e_range),
            ),
        ]
    return (
        _llama_attn(d, p)
        + moe_tensors
        + _norms(d, p, "input_layernorm", "post_attention_layernorm")
    )


def _gpt2_layer(d: ModelDims, p: str, legacy: bool) -> list[TensorSpec]:
    return [
        *_ln(d, f"{p}ln_1"),
        *_conv1d(f"{p}attn.c_attn", d.hidden, 3 * d.hidden),
        *_conv1d(f"{p}attn.c_proj", d.hidden, d.hidden),
        *_ln(d, f"{p}ln_2"),
        *_conv1d(f"{p}mlp.c_fc", d.hidden, d.intermediate),
        *_conv1d(f"{p}mlp.c_proj", d.intermediate, d.hidden),
    ]


def _neox_layer(d: ModelDims, p: str, legacy: bool) -> list[TensorSpec]:
    return [
        *_ln(d, f"{p}input_layernorm"),
        *_ln(d, f"{p}post_attention_layernorm"),
        *_dense(f"{p}attention.query_key_value", 3 * d.hidden, d.hidden),
        *_dense(f"{p}attention.dense", d.hidden, d.hidden),
        *_dense(f"{p}mlp.dense_h_to_4h", d.intermediate, d.hidden),
        *_dense(f"{p}mlp.dense_4h_to_h", d.hidden, d.intermediate),
    ]


# GPT-2's learned position table is sized by n_positions; kept small so tiny models stay tiny.
_GPT2_POSITIONS = 128


def _attn_sizes(d: ModelDims) -> dict[str, Any]:
    return {
        "hidden_size": d.hidden,
        "intermediate_size": d.intermediate,
        "num_attention_heads": d.heads,
        "num_hidden_layers": d.num_layers,
        "num_key_value_heads": d.kv_heads,
        "initializer_range": 0.02,
        "attention_dropout": 0.0,
    }


# The per-arch config bodies below are the keys transformers 5.x writes for these model types
# with default arguments (checked in tests by a load + re-save round trip).
def _cfg_llama(d: ModelDims) -> dict[str, Any]:
    return {
        **_attn_sizes(d),
        "attention_bias": False,
        "head_dim": d.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": 2048,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-06,
        "rope_parameters": _rope(),
    }


def _cfg_mistral(d: ModelDims) -> dict[str, Any]:
    return {
        **_attn_sizes(d),
        "head_dim": d.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-06,
        "rope_parameters": _rope(),
        "sliding_window": 4096,
    }


def _cfg_qwen2(d: ModelDims) -> dict[str, Any]:
    return {
        **_attn_sizes(d),
        "hidden_act": "silu",
        "layer_types": ["full_attention"] * d.num_layers,
        "max_position_embeddings": 32768,
        "max_window_layers": 28,
        "rms_norm_eps": 1e-06,
        "rope_parameters": _rope(),
        "sliding_window": None,
        "use_sliding_window": False,
    }


def _cfg_qwen3(d: ModelDims) -> dict[str, Any]:
    # Qwen3's default head_dim is 128 regardless of hidden size, so it must be explicit.
    return {**_cfg_qwen2(d), "attention_bias": False, "head_dim": d.head_dim}


def _cfg_gemma2(d: ModelDims) -> dict[str, Any]:
    return {
        **_attn_sizes(d),
        "attention_bias": False,
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
        "head_dim": d.head_dim,  # default 256 would not match hidden // heads
        "hidden_activation": "gelu_pytorch_tanh",
        # Gemma 2 alternates local (sliding) and global attention, starting with local.
        "layer_types": [
            "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(d.num_layers)
        ],
        "max_position_embeddings": 8192,
        "query_pre_attn_scalar": 256,
        "rms_norm_eps": 1e-06,
        "rope_parameters": _rope(),
        "sliding_window": 4096,
        "use_bidirectional_attention": None,
    }


def _cfg_phi3(d: ModelDims) -> dict[str, Any]:
    return {
        **_attn_sizes(d),
        "embd_pdrop": 0.0,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "original_max_position_embeddings": 4096,
        "resid_pdrop": 0.0,
        "rms_norm_eps": 1e-05,
        "rope_parameters": _rope(partial_rotary_factor=1.0),
        "sliding_window": None,
    }


def _cfg_mixtral(d: ModelDims) -> dict[str, Any]:
    return {
        **_attn_sizes(d),
        "head_dim": None,
        "hidden_act": "silu",
        "max_position_embeddings": 131072,
        "num_experts_per_tok": 2,
        "num_local_experts": d.num_experts,
        "output_router_logits": False,
        "rms_norm_eps": 1e-05,
        "rope_parameters": _rope(1000000.0),
        "router_aux_loss_coef": 0.001,
        "router_jitter_noise": 0.0,
        "sliding_window": None,
    }


def _cfg_gpt2(d: ModelDims) -> dict[str, Any]:
    return {
        "activation_function": "gelu_new",
        "add_cross_attention": False,
        "attn_pdrop": 0.1,
        "embd_pdrop": 0.1,
        "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-05,
        "n_embd": d.hidden,
        "n_head": d.heads,
        "n_inner": d.intermediate,
        "n_layer": d.num_layers,
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
    }


def _cfg_gpt_neox(d: ModelDims) -> dict[str, Any]:
    cfg = _attn_sizes(d)
    del cfg["num_key_value_heads"]  # GPT-NeoX has no GQA and no such key
    # Pythia rotates a quarter of each head; tiny heads need at least 2 rotary dims (one
    # complex pair) or the rotary embedding degenerates, so the factor is raised for them.
    rotary = 0.25 if d.head_dim >= 8 else 2.0 / d.head_dim if d.head_dim >= 2 else 1.0
    return {
        **cfg,
        "attention_bias": True,
        "classifier_dropout": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout": 0.0,
        "is_decoder": False,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 2048,
        "rope_parameters": _rope(partial_rotary_factor=rotary),
        "use_parallel_residual": True,
    }


def _llama_like(
    model_type: str,
    architecture: str,
    layer: Callable[[ModelDims, str, bool], list[TensorSpec]],
    config: Callable[[ModelDims], dict[str, Any]],
    **kw: Any,
) -> ArchSpec:
    """Spec for the ``model.embed_tokens`` / ``model.layers.N`` / ``model.norm`` family."""
    return ArchSpec(
        model_type=model_type,
        architecture=architecture,
        layer_prefix="model.layers.{i}.",
        layer_count_key="num_hidden_layers",
        embed="model.embed_tokens.weight",
        lm_head="lm_head.weight",
        tie_default=kw.pop("tie_default", False),
        pre=_model_pre,
        layer=layer,
        post=_model_post,
        config=config,
        **kw,
    )


#: Architecture registry, keyed by the ``arch`` argument (== config ``model_type``).
ARCHS: dict[str, ArchSpec] = {
    "llama": _llama_like("llama", "LlamaForCausalLM", _llama_layer, _cfg_llama),
    "mistral": _llama_like("mistral", "MistralForCausalLM", _llama_layer, _cfg_mistral),
    "qwen2": _llama_like("qwen2", "Qwen2ForCausalLM", _qwen2_layer, _cfg_qwen2),
    "qwen3": _llama_like("qwen3", "Qwen3ForCausalLM", _qwen3_layer, _cfg_qwen3),
    "gemma2": _llama_like(
        "gemma2", "Gemma2ForCausalLM", _gemma2_layer, _cfg_gemma2, tie_default=True, norm_center=0.0
    ),
    "phi3": _llama_like("phi3", "Phi3ForCausalLM", _phi3_layer, _cfg_phi3),
    "mixtral": _llama_like(
        "mixtral", "MixtralForCausalLM", _mixtral_layer, _cfg_mixtral, is_moe=True
    ),
    "gpt2": ArchSpec(
        model_type="gpt2",
        architecture="GPT2LMHeadModel",
        layer_prefix="transformer.h.{i}.",
        layer_count_key="n_layer",
        embed="transformer.wte.weight",
        lm_head="lm_head.weight",
        tie_default=True,
        pre=lambda d: [
            TensorSpec("transformer.wte.weight", (d.vocab, d.hidden), "embed"),
            TensorSpec("transformer.wpe.weight", (_GPT2_POSITIONS, d.hidden), "embed"),
        ],
        layer=_gpt2_layer,
        post=lambda d: _ln(d, "transformer.ln_f"),
        config=_cfg_gpt2,
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
        pre=lambda d: [TensorSpec("gpt_neox.embed_in.weight", (d.vocab, d.hidden), "embed")],
        layer=_neox_layer,
        post=lambda d: _ln(d, "gpt_neox.final_layer_norm"),
        config=_cfg_gpt_neox,
        mha_only=True,
    ),
}


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _arch(arch: str) -> ArchSpec:
    try:
        return ARCHS[arch]
    except KeyError:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}") from None


def _dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPE_NAMES:
            raise ValueError(f"unsupported dtype {dtype}; use float32, float16 or bfloat16")
        return dtype
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unsupported dtype {dtype!r}; use one of {sorted(_DTYPES)}") from None


def _dims(
    spec: ArchSpec,
    *,
    num_layers: int,
    hidden: int,
    intermediate: int,
    vocab: int,
    heads: int,
    kv_heads: int,
    num_experts: int,
) -> ModelDims:
    if spec.mha_only:
        kv_heads = heads
    if min(num_layers, hidden, intermediate, vocab, heads, kv_heads, num_experts) < 1:
        raise ValueError("all model dimensions must be positive")
    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
    if heads % kv_heads:
        raise ValueError(f"heads ({heads}) must be divisible by kv_heads ({kv_heads})")
    return ModelDims(num_layers, hidden, intermediate, vocab, heads, kv_heads, num_experts)


def _dump_json(path: Path, obj: Any) -> None:
    # transformers writes configs/indexes with indent=2, sorted keys and a trailing newline.
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _config_dict(
    spec: ArchSpec, dims: ModelDims, *, tie: bool, dtype: torch.dtype
) -> dict[str, Any]:
    cfg = spec.config(dims)
    cfg.update(
        architectures=[spec.architecture],
        bos_token_id=_BOS_ID,
        dtype=_DTYPE_NAMES[dtype],
        eos_token_id=_EOS_ID,
        model_type=spec.model_type,
        pad_token_id=None,
        tie_word_embeddings=tie,
        transformers_version=TRANSFORMERS_LAYOUT_VERSION,
        use_cache=True,
        vocab_size=dims.vocab,
    )
    return cfg


def _generation_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    # save_pretrained writes only the non-default generation fields taken from the model config.
    gen: dict[str, Any] = {
        "_from_model_config": True,
        "output_attentions": False,
        "output_hidden_states": False,
        "transformers_version": TRANSFORMERS_LAYOUT_VERSION,
        "use_cache": True,
    }
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if cfg.get(key) is not None:
            gen[key] = cfg[key]
    return gen


def _tensor_seed(seed: int, key: str) -> int:
    # crc32 is stable across processes (unlike hash()), so values depend only on (seed, name).
    return (seed * 1_000_003 + zlib.crc32(key.encode("utf-8"))) % (2**63 - 1)


def _noise(seed: int, key: str, shape: Sequence[int]) -> torch.Tensor:
    gen = torch.Generator().manual_seed(_tensor_seed(seed, key))
    return torch.randn(tuple(shape), generator=gen, dtype=torch.float32)


def _init_tensor(t: TensorSpec, seed: int, norm_center: float) -> torch.Tensor:
    """Deterministic float32 values for ``t``."""
    if t.parts:
        # Each stacked entry is the dim-0 concatenation of its parts, which share one shape.
        part_shape = (t.shape[1] // len(t.parts[0]), *t.shape[2:])
        return (
            torch.stack(
                [torch.cat([_noise(seed, n, part_shape) for n in group]) for group in t.parts]
            )
            * _INIT_STD
        )
    value = _noise(seed, t.seed_key or t.name, t.shape) * _INIT_STD
    if t.kind == "norm":
        value += norm_center
    return value


def _clear_weights(path: Path) -> None:
    for pattern in _WEIGHT_GLOBS:
        for f in path.glob(pattern):
            f.unlink()


def _split_shards(sizes: Iterable[tuple[str, int]], shard_size: int | None) -> list[list[str]]:
    """Greedy split in model order, as save_pretrained does: a new shard starts when the next
    tensor would overflow the current one; a tensor larger than ``shard_size`` gets its own."""
    shards: list[list[str]] = [[]]
    current = 0
    for name, nbytes in sizes:
        if shard_size is not None and shards[-1] and current + nbytes > shard_size:
            shards.append([])
            current = 0
        shards[-1].append(name)
        current += nbytes
    return shards


def _shard_names(n: int, fmt: str) -> list[str]:
    stem, ext = ("model", "safetensors") if fmt == "safetensors" else ("pytorch_model", "bin")
    if n == 1:
        return [f"{stem}.{ext}"]
    return [f"{stem}-{i:05d}-of-{n:05d}.{ext}" for i in range(1, n + 1)]


def _write_index(
    path: Path, fmt: str, weight_map: Mapping[str, str], total_size: int, total_params: int
) -> None:
    index_name = (
        "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    )
    _dump_json(
        path / index_name,
        {
            "metadata": {"total_parameters": total_params, "total_size": total_size},
            "weight_map": dict(sorted(weight_map.items())),
        },
    )


def _write_weights(
    path: Path, tensors: Mapping[str, torch.Tensor], *, fmt: str, shard_size: int | None
) -> None:
    if fmt not in ("safetensors", "bin"):
        raise ValueError(f"fmt must be 'safetensors' or 'bin', not {fmt!r}")
    _clear_weights(path)
    groups = _split_shards(
        ((n, t.numel() * t.element_size()) for n, t in tensors.items()), shard_size
    )
    files = _shard_names(len(groups), fmt)
    weight_map: dict[str, str] = {}
    for fname, names in zip(files, groups, strict=True):
        part = {n: tensors[n].contiguous() for n in names}
        if fmt == "safetensors":
            save_file(part, str(path / fname), metadata={"format": "pt"})
        else:
            torch.save(part, path / fname)
        weight_map.update(dict.fromkeys(names, fname))
    if len(files) > 1:
        _write_index(
            path,
            fmt,
            weight_map,
            sum(t.numel() * t.element_size() for t in tensors.values()),
            sum(t.numel() for t in tensors.values()),
        )


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


def _added_token(idx: int, content: str) -> dict[str, Any]:
    return {
        "id": idx,
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": True,
    }


def write_tiny_tokenizer(
    path: str | Path,
    vocab: int = 64,
    *,
    added_tokens: Sequence[str] | None = None,
    chat_template: str | None = None,
    model_max_length: int = 2048,
) -> Path:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``.

    The model is BPE over ``<unk>``, ``<s>``, ``</s>``, ``tok_3`` ... ``tok_{vocab-1}`` with no
    merges and a whitespace pre-tokenizer; ``ignore_merges`` makes whole in-vocab words
    (``"tok_5"``) encode to their id, so ``"tok_5 tok_7"`` -> ``[5, 7]``. ``added_tokens`` get ids
    ``vocab, vocab+1, ...`` (special, never split), so ``len(tokenizer) == vocab +
    len(added_tokens)``. Loads with ``transformers.AutoTokenizer`` without needing
    ``tokenizers`` here.

    Caveat: for a folder whose ``config.json`` says ``model_type: qwen2``, transformers v5's
    AutoTokenizer ignores ``tokenizer_class`` and builds ``Qwen2Tokenizer``, which keeps this
    vocab and the special/added tokens but swaps in its byte-level pipeline: ``"tok_5"`` then no
    longer encodes to 5 (use ``convert_tokens_to_ids``, or special/added tokens, in tests).
    """
    if vocab < len(_SPECIAL_TOKENS):
        raise ValueError(f"a tokenizer needs vocab >= {len(_SPECIAL_TOKENS)}")
    extra = list(added_tokens or ())
    if len(set(extra)) != len(extra):
        raise ValueError("added_tokens contains duplicates")
    base = list(_SPECIAL_TOKENS) + [f"tok_{i}" for i in range(len(_SPECIAL_TOKENS), vocab)]
    if clash := set(extra) & set(base):
        raise ValueError(f"added_tokens already in the base vocab: {sorted(clash)}")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    added = [_added_token(i, t) for i, t in enumerate(_SPECIAL_TOKENS)]
    added += [_added_token(vocab + j, t) for j, t in enumerate(extra)]
    tokenizer: dict[str, Any] = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": "<unk>",
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": False,
            "ignore_merges": True,
            "vocab": {tok: i for i, tok in enumerate(base)},
            "merges": [],
        },
    }
    (out / "tokenizer.json").write_text(json.dumps(tokenizer, indent=2) + "\n", encoding="utf-8")
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    config: dict[str, Any] = {
        "added_tokens_decoder": {
            str(a["id"]): {k: v for k, v in a.items() if k != "id"} for a in added
        },
        **specials,
        "clean_up_tokenization_spaces": False,
        # Explicitly none: otherwise transformers v5's Qwen2Tokenizer (which AutoTokenizer forces
        # for model_type qwen2) appends its default "<|endoftext|>" pad token past the vocab.
        "pad_token": None,
        "model_max_length": model_max_length,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    _dump_json(out / "tokenizer_config.json", config)
    _dump_json(out / "special_tokens_map.json", specials)
    return out


def _base_tokenizer_layout(base: Path, config_vocab: int) -> tuple[int, list[str], str | None]:
    """(base vocab size, added tokens in id order, chat template) of ``base``'s tokenizer."""
    tok_file = base / "tokenizer.json"
    if not tok_file.is_file():
        return config_vocab, [], None
    tok = json.loads(tok_file.read_text(encoding="utf-8"))
    n_base = len(tok["model"]["vocab"])
    added = sorted(
        (a for a in tok.get("added_tokens", []) if a["id"] >= n_base), key=lambda a: a["id"]
    )
    template = None
    cfg_file = base / "tokenizer_config.json"
    if cfg_file.is_file():
        template = json.loads(cfg_file.read_text(encoding="utf-8")).get("chat_template")
    return n_base, [a["content"] for a in added], template


# --------------------------------------------------------------------------------------------
# Public factories
# --------------------------------------------------------------------------------------------


def expected_tensor_shapes(
    arch: str = "llama",
    *,
    num_layers: int = 2,
    hidden: int = 16,
    intermediate: int = 32,
    vocab: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    num_experts: int = 4,
    tie_embeddings: bool | None = None,
    legacy_moe_names: bool = True,
) -> dict[str, tuple[int, ...]]:
    """``{tensor name: shape}`` that :func:`make_tiny_model` would write, in model order."""
    spec = _arch(arch)
    dims = _dims(
        spec,
        num_layers=num_layers,
        hidden=hidden,
        intermediate=intermediate,
        vocab=vocab,
        heads=heads,
        kv_heads=kv_heads,
        num_experts=num_experts,
    )
    tie = spec.tie_default if tie_embeddings is None else tie_embeddings
    return {t.name: t.shape for t in spec.tensors(dims, tie=tie, legacy_moe_names=legacy_moe_names)}


def make_tiny_model(
    path: str | Path,
    arch: str = "llama",
    *,
    num_layers: int = 2,
    hidden: int = 16,
    intermediate: int = 32,
    vocab: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    num_experts: int = 4,
    seed: int = 0,
    dtype: str = "float32",
    shard_size: int | None = None,
    tie_embeddings: bool | None = None,
    with_tokenizer: bool = True,
    fmt: str = "safetensors",
    base: str | Path | None = None,
    delta_scale: float = 0.05,
    legacy_moe_names: bool = True,
    added_tokens: Sequence[str] | None = None,
    chat_template: str | None = None,
) -> Path:
    """Write a tiny Hugging Face model folder and return its path.

    The folder holds ``config.json`` and ``generation_config.json`` as transformers writes them
    for ``arch``, the weights (``model.safetensors``; several ``model-0000i-of-0000N`` shards
    plus ``model.safetensors.index.json`` when ``shard_size`` bytes is exceeded;
    ``pytorch_model.bin`` when ``fmt="bin"``), and unless ``with_tokenizer=False`` a tiny
    tokenizer (see :func:`write_tiny_tokenizer`). Values are deterministic in ``seed``; with
    tied embeddings (``tie_embeddings``, default: the architecture's usual choice) no output
    projection is written, as transformers does.

    ``vocab`` is the base tokenizer's size; the model's ``vocab_size`` is
    ``vocab + len(added_tokens)`` so every token id has an embedding row.

    ``legacy_moe_names`` (MoE archs): ``True`` writes the per-expert
    ``block_sparse_moe.experts.N.w1/w2/w3`` layout that ``save_pretrained`` writes by default;
    ``False`` writes transformers v5's fused runtime layout
    (``mlp.gate``, ``mlp.experts.gate_up_proj``, ``mlp.experts.down_proj``). Both hold the same
    numbers.

    With ``base`` (a folder), writes a "fine-tune" of it instead: every tensor becomes
    ``base + delta_scale * std(base tensor) * noise(seed)``, keeping names and dtypes;
    ``config.json``/``generation_config.json`` are copied from ``base``, and the architecture,
    size and dtype arguments are ignored. The tokenizer is copied from ``base`` too, unless
    ``added_tokens``/``chat_template`` are given: then it is rewritten with ``base``'s tokens plus
    the new ones, and the embedding/output rows grow to match (new rows are fresh random).
    """
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    if base is not None:
        _make_finetune(
            out,
            Path(base),
            seed=seed,
            delta_scale=delta_scale,
            shard_size=shard_size,
            fmt=fmt,
            with_tokenizer=with_tokenizer,
            added_tokens=added_tokens,
            chat_template=chat_template,
        )
        return out

    spec = _arch(arch)
    extra = list(added_tokens or ())
    dims = _dims(
        spec,
        num_layers=num_layers,
        hidden=hidden,
        intermediate=intermediate,
        vocab=vocab + len(extra),
        heads=heads,
        kv_heads=kv_heads,
        num_experts=num_experts,
    )
    torch_dtype = _dtype(dtype)
    tie = spec.tie_default if tie_embeddings is None else tie_embeddings
    cfg = _config_dict(spec, dims, tie=tie, dtype=torch_dtype)
    _dump_json(out / "config.json", cfg)
    _dump_json(out / "generation_config.json", _generation_config(cfg))
    tensors = {
        t.name: _init_tensor(t, seed, spec.norm_center).to(torch_dtype)
        for t in spec.tensors(dims, tie=tie, legacy_moe_names=legacy_moe_names)
    }
    _write_weights(out, tensors, fmt=fmt, shard_size=shard_size)
    if with_tokenizer:
        write_tiny_tokenizer(out, vocab, added_tokens=extra, chat_template=chat_template)
    return out


def _make_finetune(
    out: Path,
    base: Path,
    *,
    seed: int,
    delta_scale: float,
    shard_size: int | None,
    fmt: str,
    with_tokenizer: bool,
    added_tokens: Sequence[str] | None,
    chat_template: str | None,
) -> None:
    cfg_file = base / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"base model {base} has no config.json")
    if out.resolve() == base.resolve():
        raise ValueError("a fine-tune must be written to a different folder than its base")
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    base_tensors = read_model(base)

    # Work out the tokenizer first: new tokens may grow the vocab-sized tensors.
    n_base, base_added, base_template = _base_tokenizer_layout(base, int(cfg["vocab_size"]))
    new_added = base_added + [t for t in (added_tokens or ()) if t not in base_added]
    rewrite_tokenizer = bool(added_tokens) or chat_template is not None
    new_vocab = max(int(cfg["vocab_size"]), n_base + len(new_added))

    vocab_names: set[str] = set()
    if new_vocab != cfg["vocab_size"]:
        spec = ARCHS.get(cfg.get("model_type", ""))
        if spec is None:
            raise ValueError(
                f"cannot grow the vocabulary of unknown model_type {cfg.get('model_type')!r}"
            )
        vocab_names = {spec.embed, spec.lm_head}
        cfg["vocab_size"] = new_vocab

    tensors: dict[str, torch.Tensor] = {}
    for name, value in base_tensors.items():
        work = value.float()
        std = float(work.std()) if work.numel() > 1 else 0.0
        # A constant tensor (std 0) still gets a visible, proportionally tiny delta.
        scale = delta_scale * (std if std > 0 else max(float(work.abs().mean()), 1.0))
        new = work + scale * _noise(seed, "delta:" + name, work.shape)
        if name in vocab_names and new.shape[0] < new_vocab:
            fresh = _noise(seed, "grow:" + name, (new_vocab, *new.shape[1:])) * _INIT_STD
            new = torch.cat([new, fresh[new.shape[0] :]])
        tensors[name] = new.to(value.dtype)

    _dump_json(out / "config.json", cfg)
    gen_file = base / "generation_config.json"
    if gen_file.is_file():
        shutil.copyfile(gen_file, out / "generation_config.json")
    _write_weights(out, tensors, fmt=fmt, shard_size=shard_size)
    if not with_tokenizer:
        return
    if rewrite_tokenizer:
        write_tiny_tokenizer(
            out,
            n_base,
            added_tokens=new_added,
            chat_template=chat_template if chat_template is not None else base_template,
        )
    else:
        for name in _TOKENIZER_FILES:
            if (base / name).is_file():
                shutil.copyfile(base / name, out / name)


def make_model_family(
    root: str | Path, arch: str = "llama", n: int = 2, **kw: Any
) -> tuple[Path, list[Path]]:
    """Write ``root/base`` and ``n`` fine-tunes ``root/ft1`` ... ``root/ftN`` of it.

    ``kw`` goes to every :func:`make_tiny_model` call. The base uses ``seed`` (default 0) and
    fine-tune ``i`` uses ``seed + i``, so each fine-tune has its own delta.
    """
    root = Path(root)
    seed = int(kw.pop("seed", 0))
    kw.pop("base", None)
    base = make_tiny_model(root / "base", arch, seed=seed, **kw)
    fts = [
        make_tiny_model(root / f"ft{i}", arch, seed=seed + i, base=base, **kw)
        for i in range(1, n + 1)
    ]
    return base, fts


def _write_header_only_safetensors(
    path: Path, specs: Sequence[TensorSpec], dtype: torch.dtype
) -> int:
    """Write a valid safetensors header for ``specs`` and a sparse (hole) data section.

    Returns the data size in bytes. Layout: 8-byte little-endian header length, the JSON
    header padded with spaces to a multiple of 8 (as the safetensors library does), then the
    data, which is never written -- ``truncate`` just extends the file, so filesystems with
    sparse-file support allocate no blocks for it and reads return zeros.
    """
    st_dtype, itemsize = _ST_DTYPES[dtype]
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    # safetensors orders same-dtype tensors by name; mirror it so these headers look real.
    for t in sorted(specs, key=lambda s: s.name):
        nbytes = itemsize
        for dim in t.shape:
            nbytes *= dim
        header[t.name] = {
            "dtype": st_dtype,
            "shape": list(t.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        f.truncate(8 + len(raw) + offset)
    return offset


def make_header_only_model(
    path: str | Path,
    arch: str = "llama",
    *,
    num_layers: int = 80,
    hidden: int = 8192,
    intermediate: int = 28672,
    vocab: int = 128256,
    heads: int = 64,
    kv_heads: int = 8,
    dtype: str = "bfloat16",
    shard_size: int = 5 * 10**9,
    num_experts: int = 8,
    tie_embeddings: bool | None = None,
    legacy_moe_names: bool = True,
) -> Path:
    """Write a full-size (default: Llama-70B-shaped) sharded checkpoint with no tensor data.

    Each ``model-0000i-of-0000N.safetensors`` has a valid header and the right file size, but
    its data section is a sparse hole (all zeros when read, no disk blocks), so planning a
    recipe over several 70B models costs neither disk nor memory. ``config.json``,
    ``generation_config.json`` and ``model.safetensors.index.json`` are real. No tokenizer is
    written (a 128k-entry one would dominate the cost). Do not :func:`read_model` it: that
    would materialise every (zero) byte.
    """
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    spec = _arch(arch)
    dims = _dims(
        spec,
        num_layers=num_layers,
        hidden=hidden,
        intermediate=intermediate,
        vocab=vocab,
        heads=heads,
        kv_heads=kv_heads,
        num_experts=num_experts,
    )
    torch_dtype = _dtype(dtype)
    if torch_dtype not in _ST_DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}")
    tie = spec.tie_default if tie_embeddings is None else tie_embeddings
    cfg = _config_dict(spec, dims, tie=tie, dtype=torch_dtype)
    _dump_json(out / "config.json", cfg)
    _dump_json(out / "generation_config.json", _generation_config(cfg))

    specs = spec.tensors(dims, tie=tie, legacy_moe_names=legacy_moe_names)
    by_name = {t.name: t for t in specs}
    itemsize = _ST_DTYPES[torch_dtype][1]

    def nbytes(t: TensorSpec) -> int:
        n = itemsize
        for dim in t.shape:
            n *= dim
        return n

    _clear_weights(out)
    groups = _split_shards(((t.name, nbytes(t)) for t in specs), shard_size)
    files = _shard_names(len(groups), "safetensors")
    weight_map: dict[str, str] = {}
    total = 0
    for fname, names in zip(files, groups, strict=True):
        total += _write_header_only_safetensors(
            out / fname, [by_name[n] for n in names], torch_dtype
        )
        weight_map.update(dict.fromkeys(names, fname))
    if len(files) > 1:
        _write_index(out, "safetensors", weight_map, total, total // itemsize)
    return out


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _weight_files(path: Path) -> list[Path]:
    """The weight files of a folder, preferring safetensors like transformers does."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = path / index_name
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            return [path / f for f in sorted(set(weight_map.values()))]
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (path / single).is_file():
            return [path / single]
    for pattern in ("*.safetensors", "*.bin"):
        found = sorted(path.glob(pattern))
        if found:
            return found
    raise FileNotFoundError(f"no safetensors or .bin weights in {path}")


def read_model(path: str | Path) -> dict[str, torch.Tensor]:
    """Load every tensor of a model folder (safetensors or ``.bin``, sharded or not) on CPU.

    ``.bin`` files are loaded with ``weights_only=True`` so a test can never execute pickled
    code from a checkpoint.
    """
    out: dict[str, torch.Tensor] = {}
    for f in _weight_files(Path(path)):
        if f.suffix == ".safetensors":
            part = load_file(str(f))
        else:
            part = torch.load(f, map_location="cpu", weights_only=True)
        dup = out.keys() & part.keys()
        if dup:
            raise ValueError(f"tensor(s) stored twice in {path}: {sorted(dup)[:3]}")
        out.update(part)
    return out
