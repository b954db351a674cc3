"""Architecture inferred from tensor names and config.json, instead of per-model tables.

A *layer tensor* has a numeric path segment: ``model.layers.3.mlp.up_proj.weight`` splits into
stack prefix ``model.layers.``, layer 3 and suffix ``mlp.up_proj.weight``. The stack with the
most layers is the decoder stack that ``slices:`` select from; everything else is a non-layer
tensor, placed before the stack (embeddings) or after it (final norm, lm_head).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "LayerName",
    "ModelLayout",
    "split_layer_name",
    "infer_layout",
    "LAYER_COUNT_KEYS",
    "find_config_key",
    "set_config_key",
]

# Config keys that hold the decoder layer count, in the order they are looked for; a
# ``text_config`` (VLMs) is searched too.
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
# Non-layer tensors that sit before the stack; everything else non-layer is "post".
_PRE_PATTERN = re.compile(
    r"(embed_tokens|wte|wpe|embed_in|word_embeddings|position_embeddings|tok_embeddings|embeddings\.)"
)
_INPUT_EMBED_PATTERN = re.compile(
    r"(embed_tokens|\bwte|embed_in|word_embeddings|tok_embeddings)\.weight$"
)
_OUTPUT_HEAD_NAMES = ("lm_head.weight", "embed_out.weight", "output.weight")
# Buffers some checkpoints carry that models recompute; never merged, never required.
_SKIPPED_SUFFIXES = (".rotary_emb.inv_freq", ".attn.masked_bias", ".attn.bias")


@dataclass(frozen=True)
class LayerName:
    prefix: str  # "model.layers." (with the trailing dot)
    index: int
    suffix: str  # "mlp.up_proj.weight"

    def with_index(self, index: int) -> str:
        return f"{self.prefix}{index}.{self.suffix}"


def split_layer_name(name: str) -> LayerName | None:
    """Split at the first all-digit path segment that is neither first nor last."""
    parts = name.split(".")
    for i in range(1, len(parts) - 1):
        if parts[i].isdigit():
            return LayerName(".".join(parts[:i]) + ".", int(parts[i]), ".".join(parts[i + 1 :]))
    return None


def is_skipped_buffer(name: str) -> bool:
    return name.endswith(_SKIPPED_SUFFIXES)


@dataclass
class ModelLayout:
    """One model's tensors, grouped: the main layer stack, other stacks, pre and post tensors."""

    stack_prefix: str | None
    num_layers: int
    layer_suffixes: dict[int, list[str]]  # layer index -> suffixes in file order
    pre: list[str] = field(default_factory=list)
    post: list[str] = field(default_factory=list)
    other_stacks: dict[str, int] = field(default_factory=dict)  # prefix -> layer count
    input_embedding: str | None = None
    output_head: str | None = None
    config_layer_key: str | None = None
    config_layers: int | None = None

    def layer_tensor(self, index: int, suffix: str) -> str:
        assert self.stack_prefix is not None
        return f"{self.stack_prefix}{index}.{suffix}"

    @property
    def vocab_tensors(self) -> list[str]:
        return [n for n in (self.input_embedding, self.output_head) if n]


def find_config_key(
    config: Mapping[str, Any] | None, keys: Iterable[str]
) -> tuple[str, Any] | None:
    """First of ``keys`` present in ``config`` or its ``text_config``; returns (dotted key, value)."""
    if not config:
        return None
    keys = tuple(keys)
    for key in keys:
        if key in config and config[key] is not None:
            return key, config[key]
    text = config.get("text_config")
    if isinstance(text, Mapping):
        for key in keys:
            if key in text and text[key] is not None:
                return f"text_config.{key}", text[key]
    return None


def set_config_key(config: dict[str, Any], dotted: str, value: Any) -> None:
    node = config
    *parents, last = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value


def infer_layout(names: Iterable[str], config: Mapping[str, Any] | None) -> ModelLayout:
    """Group a model's tensor names (in file order) into stack, pre and post tensors."""
    stacks: dict[str, dict[int, list[str]]] = {}
    loose: list[str] = []
    for name in names:
        if is_skipped_buffer(name):
            continue
        parsed = split_layer_name(name)
        if parsed is None:
            loose.append(name)
        else:
            stacks.setdefault(parsed.prefix, {}).setdefault(parsed.index, []).append(parsed.suffix)
    found = find_config_key(config, LAYER_COUNT_KEYS)
    cfg_key, cfg_layers = found if found else (None, None)
    main: str | None = None
    if stacks:
        # The decoder stack: the one whose length matches the config, else the longest.
        by_len = sorted(stacks, key=lambda p: (-(max(stacks[p]) + 1), p))
        matching = [
            p for p in by_len if isinstance(cfg_layers, int) and max(stacks[p]) + 1 == cfg_layers
        ]
        main = (matching or by_len)[0]
    layout = ModelLayout(
        stack_prefix=main,
        num_layers=(max(stacks[main]) + 1) if main else 0,
        layer_suffixes=stacks.get(main, {}) if main else {},
        config_layer_key=cfg_key,
        config_layers=cfg_layers if isinstance(cfg_layers, int) else None,
    )
    for prefix, layers in stacks.items():
        if prefix != main:
            layout.other_stacks[prefix] = max(layers) + 1
    for name in loose:
        is_head = name in _OUTPUT_HEAD_NAMES or name.endswith(".lm_head.weight")
        if _PRE_PATTERN.search(name) and not is_head:
            layout.pre.append(name)
        else:
            layout.post.append(name)
        if layout.input_embedding is None and _INPUT_EMBED_PATTERN.search(name):
            layout.input_embedding = name
        if layout.output_head is None and is_head:
            layout.output_head = name
    return layout


def tied_head_name(layout: ModelLayout) -> str:
    """The name an output head has (or would have) in this model family."""
    if layout.output_head:
        return layout.output_head
    if layout.input_embedding and layout.input_embedding.startswith("gpt_neox."):
        return "embed_out.weight"
    return "lm_head.weight"
