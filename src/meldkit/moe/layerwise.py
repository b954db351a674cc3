"""Run a Llama-family base one decoder layer at a time, for the hidden-state routers.

The whole model is never loaded: the prompts are embedded, then for each decoder layer only
that layer's tensors are read (through :class:`meldkit.io.reader.TensorReader`, mapped from the
safetensors files), applied to the held hidden states of every prompt batch, and freed. Memory
is the activations of all prompts (``prompts x seq x hidden`` float32) plus one layer, with
each weight cast to float32 only while it is used.

The block math is written here (Llama, Mistral, Qwen2 and Qwen3 share it): RMSNorm, attention
with grouped key/value heads, rotary embeddings (``default``, ``linear`` and ``llama3``
scaling), optional q/k/v/o and MLP biases (taken when the checkpoint has them), Qwen3's per-head
q/k norms, sliding windows as each family's config asks, and the SiLU-gated MLP. The last layer
never runs: only layer inputs are recorded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from meldkit.errors import InputError
from meldkit.io.index import CheckpointIndex, open_index
from meldkit.io.reader import TensorReader
from meldkit.moe.hidden_states import GateMode, PromptBatch, RouterSums

if TYPE_CHECKING:
    import torch

__all__ = ["SUPPORTED_MODEL_TYPES", "BlockConfig", "layerwise_sums"]

#: The ``model_type`` values whose decoder block :func:`layerwise_sums` computes.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
_ROPE_TYPES = ("default", "linear", "llama3")
_EMBED = "model.embed_tokens.weight"
_WHOLE_MODEL_HINT = "run without --layer-by-layer (transformers loads the whole base model)"
_PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
_MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
_NORMS = ("input_layernorm.weight", "post_attention_layernorm.weight")
_QK_NORMS = ("self_attn.q_norm.weight", "self_attn.k_norm.weight")


@dataclass(frozen=True)
class BlockConfig:
    """What the block math needs from ``config.json``."""

    model_type: str
    num_layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    eps: float
    rope: dict[str, Any]  # rope_theta, rope_type and the scaling parameters
    windows: tuple[int | None, ...]  # per layer: sliding window, or None for full attention

    @classmethod
    def from_config(cls, cfg: dict[str, Any], where: str) -> BlockConfig:
        """Read and check ``cfg`` (the base's ``config.json``; ``where`` names it in errors)."""
        model_type = cfg.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise InputError(
                f"{where}: running the base layer by layer supports model types "
                f"{', '.join(SUPPORTED_MODEL_TYPES)}; this model is '{model_type}'",
                hint=_WHOLE_MODEL_HINT,
            )
        if cfg.get("hidden_act", "silu") != "silu":
            raise InputError(
                f"{where}: hidden_act '{cfg['hidden_act']}' is not supported layer by layer "
                "(only silu)",
                hint=_WHOLE_MODEL_HINT,
            )
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        num_layers = int(cfg["num_hidden_layers"])
        return cls(
            model_type=model_type,
            num_layers=num_layers,
            hidden=hidden,
            heads=heads,
            kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            intermediate=int(cfg["intermediate_size"]),
            eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope=_rope_parameters(cfg, where),
            windows=_sliding_windows(cfg, num_layers),
        )


def _rope_parameters(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    """The rotary parameters, from transformers 5's ``rope_parameters`` or 4.x's keys."""
    if isinstance(cfg.get("rope_parameters"), dict):
        params = dict(cfg["rope_parameters"])
    else:
        scaling = cfg.get("rope_scaling") or {}
        params = {**scaling, "rope_theta": cfg.get("rope_theta", 10000.0)}
        if "type" in scaling and "rope_type" not in scaling:
            params["rope_type"] = scaling["type"]
    params.setdefault("rope_type", "default")
    if params["rope_type"] not in _ROPE_TYPES:
        raise InputError(
            f"{where}: rotary scaling '{params['rope_type']}' is not supported layer by layer "
            f"(supported: {', '.join(_ROPE_TYPES)})",
            hint=_WHOLE_MODEL_HINT,
        )
    factor = params.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
    if float(factor) != 1.0:
        raise InputError(
            f"{where}: partial_rotary_factor {factor} is not supported layer by layer",
            hint=_WHOLE_MODEL_HINT,
        )
    return params


def _sliding_windows(cfg: dict[str, Any], num_layers: int) -> tuple[int | None, ...]:
    """Per layer, the sliding-window length its attention uses (None: full attention)."""
    window = cfg.get("sliding_window")
    if cfg.get("model_type") == "mistral":
        return (window,) * num_layers
    if cfg.get("model_type") not in ("qwen2", "qwen3") or not cfg.get("use_sliding_window"):
        return (None,) * num_layers
    types = cfg.get("layer_types")
    if isinstance(types, list) and len(types) == num_layers:
        return tuple(window if t == "sliding_attention" else None for t in types)
    # transformers 4.x: layers from max_window_layers on use the window.
    first = int(cfg.get("max_window_layers", num_layers))
    return tuple(window if i >= first else None for i in range(num_layers))


def rope_tables(rope: dict[str, Any], head_dim: int, seq: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (seq, head_dim) float32, for positions 0..seq-1 (half-split layout)."""
    import torch

    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    inv_freq = 1.0 / (float(rope["rope_theta"]) ** exponents)  # (head_dim / 2,)
    if rope["rope_type"] == "linear":
        inv_freq = inv_freq / float(rope["factor"])
    elif rope["rope_type"] == "llama3":
        inv_freq = _llama3_frequencies(inv_freq, rope)
    positions = torch.arange(seq, dtype=torch.float32)
    freqs = positions[:, None] * inv_freq[None, :]  # (seq, head_dim / 2)
    angles = torch.cat([freqs, freqs], dim=-1)  # (seq, head_dim)
    return angles.cos(), angles.sin()


def _llama3_frequencies(inv_freq: torch.Tensor, rope: dict[str, Any]) -> torch.Tensor:
    """Llama 3.1's scaling: long wavelengths divided by ``factor``, short ones kept, and a
    smooth blend between ``original_max_position_embeddings / {low,high}_freq_factor``."""
    import torch

    factor = float(rope["factor"])
    low, high = float(rope["low_freq_factor"]), float(rope["high_freq_factor"])
    context = float(rope["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > context / low, inv_freq / factor, inv_freq)
    smooth = (context / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= context / high) & (wavelen <= context / low)
    return torch.where(medium, blended, scaled)


def _expected_shapes(cfg: BlockConfig, layer: int) -> dict[str, tuple[int, ...]]:
    q, kv = cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    h, f = cfg.hidden, cfg.intermediate
    p = f"model.layers.{layer}."
    shapes: dict[str, tuple[int, ...]] = {p + n: (h,) for n in _NORMS}
    for name, shape in zip(_PROJECTIONS, ((q, h), (kv, h), (kv, h), (h, q))):
        shapes[f"{p}{name}.weight"] = shape
    for name, shape in zip(_MLP, ((f, h), (f, h), (h, f))):
        shapes[f"{p}{name}.weight"] = shape
    if cfg.model_type == "qwen3":
        shapes.update({p + n: (cfg.head_dim,) for n in _QK_NORMS})
    return shapes


def check_tensors(index: CheckpointIndex, cfg: BlockConfig) -> None:
    """Every tensor the block math reads exists with the config's shape (all problems at once)."""
    if index.format != "safetensors":
        raise InputError(
            f"{index.path}: running the base layer by layer needs safetensors weights",
            hint="convert the base model to safetensors, or run without --layer-by-layer",
        )
    expected: dict[str, tuple[int, ...]] = {_EMBED: (-1, cfg.hidden)}
    for layer in range(cfg.num_layers - 1):  # the last layer never runs
        expected.update(_expected_shapes(cfg, layer))
    problems = []
    for name, shape in expected.items():
        info = index.tensors.get(name)
        if info is None:
            problems.append(f"'{name}' is missing")
        elif len(info.shape) != len(shape) or any(
            want not in (-1, got) for want, got in zip(shape, info.shape)
        ):
            problems.append(f"'{name}' is {list(info.shape)}, the config says {list(shape)}")
    if problems:
        more = f" and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise InputError(
            f"{index.path} does not fit its config.json: {'; '.join(problems[:5])}{more}",
            hint="the checkpoint is incomplete or its config.json belongs to another model",
        )


def layerwise_sums(
    base_dir: str, batches: list[PromptBatch], n_experts: int, mode: GateMode, device: str
) -> RouterSums:
    """Sum the prompts' per-layer input states, running the base one decoder layer at a time."""
    import torch

    index = open_index(base_dir)
    if index.config is None:
        raise InputError(f"the base model '{base_dir}' has no config.json")
    cfg = BlockConfig.from_config(index.config, f"{base_dir}/config.json")
    check_tensors(index, cfg)
    sums = RouterSums(cfg.num_layers, n_experts, cfg.hidden)
    seq = max(b.input_ids.shape[1] for b in batches)
    cos, sin = (t.to(device) for t in rope_tables(cfg.rope, cfg.head_dim, seq))
    batches = [b.to(device) for b in batches]
    with torch.no_grad(), TensorReader() as reader:
        # Only the embedding rows of the prompts' tokens are touched (and so read from disk).
        embed = reader.read(index.tensors[_EMBED])
        states = [embed[b.input_ids.cpu()].to(device, torch.float32) for b in batches]
        del embed
        for layer in range(cfg.num_layers):
            for batch, x in zip(batches, states):
                sums.add(layer, batch, x, mode)
            if layer == cfg.num_layers - 1:
                break
            weights = _read_layer(reader, index, layer, device)
            masks = [_attention_mask(b, cfg.windows[layer]) for b in batches]
            states = [decoder_layer(x, weights, m, cos, sin, cfg) for x, m in zip(states, masks)]
            del weights
    return sums


def _read_layer(
    reader: TensorReader, index: CheckpointIndex, layer: int, device: str
) -> dict[str, torch.Tensor]:
    """Layer ``layer``'s tensors by suffix (``self_attn.q_proj.weight``), in the file's dtype."""
    prefix = f"model.layers.{layer}."
    return {
        name[len(prefix) :]: reader.read(info, device=device)
        for name, info in index.tensors.items()
        if name.startswith(prefix)
    }


def _attention_mask(batch: PromptBatch, window: int | None) -> torch.Tensor:
    """(batch, 1, seq, seq) bool, True where a query may attend: causal, real keys, the window.

    Every position may also attend to itself, so a padded query never has an empty row (which
    would make it NaN, and a NaN value poisons the real rows through the attention product even
    with zero weight); real queries' rows are unchanged by that.
    """
    import torch

    seq = batch.input_ids.shape[1]
    pos = torch.arange(seq, device=batch.input_ids.device)
    allowed = pos[None, :] <= pos[:, None]  # (query, key)
    if window is not None:
        allowed &= pos[:, None] - pos[None, :] < window
    allowed = allowed[None] & batch.attention_mask.bool()[:, None, :]  # (batch, query, key)
    allowed |= torch.eye(seq, dtype=torch.bool, device=allowed.device)[None]
    return allowed[:, None]


def _linear(x: torch.Tensor, w: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """``x @ W.T + b`` with the weight (and bias, when the checkpoint has one) in float32."""
    import torch.nn.functional as F

    bias = w.get(f"{name}.bias")
    return F.linear(x, w[f"{name}.weight"].float(), None if bias is None else bias.float())


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    import torch

    return weight.float() * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in the half-split layout: x * cos + (-x2, x1) * sin."""
    import torch

    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def _attention(
    x: torch.Tensor,
    w: dict[str, torch.Tensor],
    mask: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    cfg: BlockConfig,
) -> torch.Tensor:
    import torch.nn.functional as F

    b, s, _ = x.shape
    # (batch, seq, heads * head_dim) -> (batch, heads, seq, head_dim)
    q = _linear(x, w, "self_attn.q_proj").view(b, s, cfg.heads, cfg.head_dim).transpose(1, 2)
    k = _linear(x, w, "self_attn.k_proj").view(b, s, cfg.kv_heads, cfg.head_dim).transpose(1, 2)
    v = _linear(x, w, "self_attn.v_proj").view(b, s, cfg.kv_heads, cfg.head_dim).transpose(1, 2)
    if "self_attn.q_norm.weight" in w:  # Qwen3: RMSNorm over each head before the rotation
        q = _rms_norm(q, w["self_attn.q_norm.weight"], cfg.eps)
        k = _rms_norm(k, w["self_attn.k_norm.weight"], cfg.eps)
    q, k = _rotate(q, cos[:s], sin[:s]), _rotate(k, cos[:s], sin[:s])
    groups = cfg.heads // cfg.kv_heads  # query heads per key/value head
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=cfg.head_dim**-0.5)
    # (batch, heads, seq, head_dim) -> (batch, seq, heads * head_dim)
    return _linear(out.transpose(1, 2).reshape(b, s, -1), w, "self_attn.o_proj")


def decoder_layer(
    x: torch.Tensor,
    w: dict[str, torch.Tensor],
    mask: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    cfg: BlockConfig,
) -> torch.Tensor:
    """One pre-norm decoder block on ``x`` (batch, seq, hidden) float32."""
    import torch.nn.functional as F

    x = x + _attention(_rms_norm(x, w["input_layernorm.weight"], cfg.eps), w, mask, cos, sin, cfg)
    h = _rms_norm(x, w["post_attention_layernorm.weight"], cfg.eps)
    gated = F.silu(_linear(h, w, "mlp.gate_proj")) * _linear(h, w, "mlp.up_proj")
    return x + _linear(gated, w, "mlp.down_proj")
