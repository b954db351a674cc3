"""The MoE architectures meldkit writes, and which dense families each is built from.

Every output keeps the base model's attention, norms, embeddings and head under the same names
(these families share the Llama layout) and replaces each layer's ``mlp.*`` with a router and
one expert per recipe expert, taken from that expert's dense MLP:

=========== ================== ============== ======================================
output      inputs             shared experts tensors (per layer)
=========== ================== ============== ======================================
mixtral     llama, mistral     none           ``mlp.gate``; fused ``mlp.experts.*``
                                              or ``block_sparse_moe.experts.N.w1/w2/w3``
qwen        llama, mistral,    exactly 1      ``mlp.gate``, ``mlp.experts.*``,
(Qwen2-MoE) qwen2                             ``mlp.shared_expert.*``,
                                              ``mlp.shared_expert_gate``
qwen3       qwen3              none           ``mlp.gate``, ``mlp.experts.*``
deepseek    llama, mistral     0 or 1         ``mlp.gate``, ``mlp.experts.N.*``,
                                              ``mlp.shared_experts.*`` (remote code)
=========== ================== ============== ======================================

Expert tensors come in two layouts (``expert_layout``): ``fused`` is what transformers 5 holds
in memory: ``mlp.experts.gate_up_proj`` (experts, 2 x intermediate, hidden), each expert
cat(gate_proj, up_proj), and ``mlp.experts.down_proj`` (experts, hidden, intermediate).
``per-expert`` is one tensor per expert and projection, as transformers 4 (and llama.cpp's
converter, vLLM) read; transformers 5 loads it too, converting on load. ``auto`` (the default)
writes each output as MergeKit 0.1.5 does: Mixtral and Qwen3-MoE fused, Qwen2-MoE per-expert.
DeepSeek-MoE's remote code only reads ``per-expert``.

Phi-3 has no MoE counterpart that keeps its weights: PhiMoE uses LayerNorm with biases and
separate q/k/v projections where Phi-3 has RMSNorm and a fused ``qkv_proj``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "ExpertLayout",
    "OutputArch",
    "OUTPUT_ARCHS",
    "PROJECTIONS",
    "find_output_arch",
    "compatible_archs",
    "output_config",
]

ExpertLayout = Literal["auto", "fused", "per-expert"]
# A dense gated MLP's three projections, in the order an expert's tensors are written.
PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
_MIXTRAL_NAMES = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}


@dataclass(frozen=True)
class OutputArch:
    """One output architecture: what it accepts and how its MoE tensors are named."""

    name: str  # as in the recipe's `architecture:`
    title: str
    model_type: str
    class_name: str
    inputs: tuple[str, ...]  # accepted model_type of the base and every expert
    min_shared: int
    max_shared: int
    native: bool = True  # transformers has it (else: remote code)
    fused_by_default: bool = True  # the layout MergeKit 0.1.5 writes it in

    def layout(self, requested: ExpertLayout) -> ExpertLayout:
        """The expert layout written for ``requested`` ("auto": MergeKit's for this output)."""
        if not self.native:
            return "per-expert"  # the remote code reads nothing else
        if requested == "auto":
            return "fused" if self.fused_by_default else "per-expert"
        return requested

    def router(self, layout: ExpertLayout) -> str:
        """The router weight's layer suffix."""
        if self.name == "mixtral" and self.layout(layout) == "per-expert":
            return "block_sparse_moe.gate.weight"
        return "mlp.gate.weight"

    def fuses(self, layout: ExpertLayout) -> bool:
        return self.layout(layout) == "fused"

    def expert_tensor(self, expert: int, projection: str) -> str:
        """An unfused expert's layer suffix for ``projection`` (gate_proj, up_proj, down_proj)."""
        if self.name == "mixtral":
            return f"block_sparse_moe.experts.{expert}.{_MIXTRAL_NAMES[projection]}.weight"
        return f"mlp.experts.{expert}.{projection}.weight"

    def shared_tensor(self, projection: str) -> str:
        prefix = "mlp.shared_experts" if self.name == "deepseek" else "mlp.shared_expert"
        return f"{prefix}.{projection}.weight"


OUTPUT_ARCHS: tuple[OutputArch, ...] = (
    OutputArch("mixtral", "Mixtral", "mixtral", "MixtralForCausalLM", ("llama", "mistral"), 0, 0),
    OutputArch(
        "qwen",
        "Qwen2-MoE",
        "qwen2_moe",
        "Qwen2MoeForCausalLM",
        ("llama", "mistral", "qwen2"),
        1,
        1,
        fused_by_default=False,
    ),
    OutputArch("qwen3", "Qwen3-MoE", "qwen3_moe", "Qwen3MoeForCausalLM", ("qwen3",), 0, 0),
    OutputArch(
        "deepseek",
        "DeepSeek-MoE",
        "deepseek",
        "DeepseekForCausalLM",
        ("llama", "mistral"),
        0,
        1,
        native=False,
        fused_by_default=False,
    ),
)
_ALIASES = {"qwen2_moe": "qwen", "qwen2": "qwen", "qwen3_moe": "qwen3", "deepseek_moe": "deepseek"}


def supported_text() -> str:
    """'mixtral (from llama, mistral), ...' for error messages."""
    return ", ".join(f"{a.name} (from {', '.join(a.inputs)})" for a in OUTPUT_ARCHS)


def compatible_archs(model_types: set[str], n_shared: int) -> list[OutputArch]:
    """The outputs that accept every input family and this many shared experts."""
    return [
        a
        for a in OUTPUT_ARCHS
        if model_types <= set(a.inputs) and a.min_shared <= n_shared <= a.max_shared
    ]


def find_output_arch(
    requested: str | None, model_types: set[str], n_shared: int
) -> tuple[OutputArch | None, str | None]:
    """The output for ``architecture:`` (None: automatic), or None and the problem.

    A name matches case-insensitively by prefix, as in MergeKit ("qwen" also names qwen3:
    the first that accepts the inputs wins). Automatic choice prefers Mixtral, then the
    outputs transformers loads natively (Qwen2-MoE before DeepSeek-MoE).
    """
    families = ", ".join(sorted(model_types))
    if requested is None:
        found = compatible_archs(model_types, n_shared)
        if found:
            return found[0], None
        return None, (
            f"no MoE architecture can be built from {families} models with {n_shared} shared "
            f"expert(s); meldkit builds {supported_text()}"
        )
    key = requested.lower()
    key = _ALIASES.get(key, key)
    # Prefix matches, the exact name first: "qwen" names Qwen2-MoE, then Qwen3-MoE.
    named = sorted((a for a in OUTPUT_ARCHS if a.name.startswith(key)), key=lambda a: a.name != key)
    if not named:
        names = ", ".join(a.name for a in OUTPUT_ARCHS)
        return None, f"architecture '{requested}' is not one of {names}"
    for arch in named:
        if model_types <= set(arch.inputs) and arch.min_shared <= n_shared <= arch.max_shared:
            return arch, None
    arch = named[0]
    if not model_types <= set(arch.inputs):
        return None, (
            f"architecture '{requested}' ({arch.title}) is built from {', '.join(arch.inputs)} "
            f"models, not {families}; meldkit builds {supported_text()}"
        )
    want = (
        f"exactly {arch.min_shared}"
        if arch.min_shared == arch.max_shared
        else f"at most {arch.max_shared}"
    )
    return None, (
        f"architecture '{requested}' ({arch.title}) takes {want} shared expert(s); the recipe "
        f"has {n_shared}"
    )


# Dense-only keys that mean nothing (or something wrong) in the MoE config.
_DROPPED_KEYS = (
    "architectures",
    "model_type",
    "mlp_bias",
    "pretraining_tp",
    "auto_map",
    "_name_or_path",
    "transformers_version",
)


def output_config(
    arch: OutputArch,
    base: dict[str, Any],
    n_experts: int,
    n_shared: int,
    experts_per_token: int,
    dtype_name: str,
) -> dict[str, Any]:
    """config.json of the MoE model: the base's keys, with the family and the MoE keys set."""
    cfg = {k: v for k, v in base.items() if k not in _DROPPED_KEYS}
    # Keys an old dense config may leave to its class's default, which the MoE class sets
    # differently (Mixtral: 8 KV heads, rope_theta 1e6, rms_norm_eps 1e-5).
    cfg.setdefault("num_key_value_heads", base.get("num_attention_heads"))
    cfg.setdefault("rms_norm_eps", 1e-6)
    if "rope_parameters" not in cfg and "rope_theta" not in cfg:
        cfg["rope_theta"] = 10000.0
    cfg["architectures"] = [arch.class_name]
    cfg["model_type"] = arch.model_type
    cfg["dtype"] = dtype_name
    cfg.pop("torch_dtype", None)
    inter = base["intermediate_size"]
    if arch.name == "mixtral":
        cfg.pop("attention_bias", None)
        cfg.update(num_local_experts=n_experts, num_experts_per_tok=experts_per_token)
        cfg.update(sliding_window=None, output_router_logits=False, router_aux_loss_coef=0.001)
    elif arch.name in ("qwen", "qwen3"):
        cfg.update(num_experts=n_experts, num_experts_per_tok=experts_per_token)
        cfg.update(decoder_sparse_step=1, norm_topk_prob=True, mlp_only_layers=[])
        cfg.update(moe_intermediate_size=inter, use_sliding_window=False, sliding_window=None)
        cfg.update(output_router_logits=False, router_aux_loss_coef=0.001)
        cfg.pop("layer_types", None)  # the base's may name sliding layers; the default is full
        if arch.name == "qwen":
            cfg.pop("attention_bias", None)
            cfg.update(shared_expert_intermediate_size=inter, qkv_bias=True)
    else:  # DeepSeek-MoE (v1), as deepseek-ai/deepseek-moe-16b-base's remote code reads it
        cfg.update(n_routed_experts=n_experts, n_shared_experts=n_shared or None)
        cfg.update(num_experts_per_tok=experts_per_token, moe_intermediate_size=inter)
        cfg.update(first_k_dense_replace=0, moe_layer_freq=1, scoring_func="softmax")
        cfg.update(norm_topk_prob=True, aux_loss_alpha=0.001, seq_aux=True)
        rope = base.get("rope_parameters")
        if isinstance(rope, dict) and "rope_theta" in rope:  # the remote code reads v4's key
            cfg.setdefault("rope_theta", rope["rope_theta"])
        repo = "deepseek-ai/deepseek-moe-16b-base"
        cfg["auto_map"] = {
            "AutoConfig": f"{repo}--configuration_deepseek.DeepseekConfig",
            "AutoModel": f"{repo}--modeling_deepseek.DeepseekModel",
            "AutoModelForCausalLM": f"{repo}--modeling_deepseek.DeepseekForCausalLM",
        }
    return cfg
