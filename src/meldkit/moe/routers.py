"""Router weights: one vector per expert and layer, from the prompts or at random.

The result of :func:`gate_vectors` is ``(layers, experts, hidden)`` float32, the experts in the
plan's order (routed, then shared: a Qwen2-MoE shared expert's row becomes its
``shared_expert_gate``). Row ``e`` of layer ``l`` is the direction that sends tokens to expert
``e`` at that layer; the written router is ``(experts, hidden)`` per layer, no temperature.

* ``cheap_embed``: per prompt set, the sum of the base model's token embeddings over every
  token of every prompt (each prompt preceded by the BOS token's text, no other special tokens,
  as MergeKit tokenizes), L2-normalised; the negative set's vector is subtracted and the
  difference normalised again. The same vector serves every layer. No model is run.
* ``hidden`` / ``hidden_last`` / ``hidden_avg``: the base model's input hidden state of each
  layer (last position, or the mean over positions), computed by
  :func:`meldkit.moe.hidden_states.prompt_hidden_states` (``layer_by_layer``: one decoder
  layer in memory at a time, read from the safetensors files, for bases larger than RAM).
* ``random``: N(0, 1). ``uniform_random``: U(-1/sqrt(hidden), 1/sqrt(hidden)). Both from a
  generator seeded with the run's seed, so the same seed gives the same router on any machine
  and thread count.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from meldkit.errors import MeldError
from meldkit.moe.sources import SourceReader

if TYPE_CHECKING:
    from meldkit.moe.plan import MoePlan

__all__ = ["gate_vectors", "cheap_embedding", "degenerate_layers", "CONDITION_LIMIT"]

# MergeKit warns about a layer whose router's condition number exceeds this.
CONDITION_LIMIT = 5.0


def _normalise(v: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = v / v.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    return out


def _bos_text(folder: Path) -> str:
    """The BOS token's text from tokenizer_config.json ("" when there is none)."""
    try:
        cfg = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    bos = cfg.get("bos_token") if isinstance(cfg, dict) else None
    if isinstance(bos, dict):
        bos = bos.get("content")
    return bos if isinstance(bos, str) else ""


def _prompt_encoder(folder: Path) -> tuple[Callable[[str], list[int]], str]:
    """Token ids of a text without added special tokens, and the BOS token's text.

    transformers' AutoTokenizer when installed (what MergeKit tokenizes with: it may adjust
    the tokenizer.json pipeline from tokenizer_config.json), else ``tokenizers`` on
    tokenizer.json directly.
    """
    try:
        from transformers import AutoTokenizer
    except ImportError:
        if not (folder / "tokenizer.json").is_file():
            raise MeldError(
                f"gate_mode cheap_embed needs transformers to read the tokenizer of {folder}",
                hint="pip install 'meldkit[hf]'",
            ) from None
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        return (lambda text: list(tok.encode(text, add_special_tokens=False).ids)), _bos_text(
            folder
        )
    auto = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    bos = auto.bos_token if isinstance(auto.bos_token, str) else ""
    return (lambda text: list(auto.encode(text, add_special_tokens=False))), bos


def cheap_embedding(embed: torch.Tensor, ids: Sequence[Sequence[int]]) -> torch.Tensor:
    """The normalised sum of ``embed`` rows over every token id of every prompt: (hidden,)."""
    total = torch.zeros(embed.shape[1], dtype=torch.float32)
    for prompt in ids:
        if len(prompt):
            rows = embed.index_select(0, torch.tensor(list(prompt), dtype=torch.long))
            total += rows.to(torch.float32).sum(dim=0)  # (hidden,)
    return _normalise(total)


def _cheap_embed_gates(plan: MoePlan, reader: SourceReader) -> torch.Tensor:
    base = plan.models[plan.base]
    name = base.layout.input_embedding
    if name is None:
        raise MeldError(
            f"{base.key} has no input embedding tensor for gate_mode cheap_embed",
            hint="use gate_mode hidden or random",
        )
    embed = reader.read(plan.base, name).to(torch.float32)  # (vocab, hidden)
    encode, bos = _prompt_encoder(base.folder)

    def ids(prompts: Sequence[str]) -> list[list[int]]:
        return [encode(bos + p) for p in prompts]

    rows = []
    for e in plan.experts:
        v = cheap_embedding(embed, ids(e.positive_prompts))
        if e.negative_prompts:
            v = _normalise(v - cheap_embedding(embed, ids(e.negative_prompts)))
        rows.append(v)
    gates = torch.stack(rows)  # (experts, hidden)
    return gates.unsqueeze(0).repeat(plan.num_layers, 1, 1)  # (layers, experts, hidden)


def _random_gates(plan: MoePlan, mode: str, seed: int) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    shape = (plan.num_layers, len(plan.experts), plan.hidden)
    if mode == "random":
        return torch.randn(shape, generator=gen, dtype=torch.float32)
    bound = 1.0 / math.sqrt(plan.hidden)
    return torch.rand(shape, generator=gen, dtype=torch.float32) * (2 * bound) - bound


def _hidden_gates(plan: MoePlan, mode: str, device: str, layer_by_layer: bool) -> torch.Tensor:
    try:
        from meldkit.moe.hidden_states import prompt_hidden_states
    except ImportError:
        raise MeldError(
            f"gate_mode '{mode}' is not available in this meldkit build (the hidden-state "
            "router is missing)",
            hint="use gate_mode cheap_embed, random or uniform_random",
        ) from None
    gates = prompt_hidden_states(
        str(plan.models[plan.base].folder),
        [list(e.positive_prompts) for e in plan.experts],
        [list(e.negative_prompts) for e in plan.experts],
        "hidden_avg" if mode == "hidden_avg" else "hidden",
        device=device,
        layer_by_layer=layer_by_layer,
    )
    return gates.to(device="cpu", dtype=torch.float32)


def gate_vectors(
    plan: MoePlan,
    reader: SourceReader,
    seed: int,
    device: str = "cpu",
    layer_by_layer: bool = False,
) -> torch.Tensor:
    """Every router row of the build: (layers, experts incl. shared, hidden) float32."""
    mode = plan.config.gate_mode
    if mode in ("random", "uniform_random"):
        return _random_gates(plan, mode, seed)
    if mode == "cheap_embed":
        return _cheap_embed_gates(plan, reader)
    return _hidden_gates(plan, mode, device, layer_by_layer)


def degenerate_layers(gates: torch.Tensor, n_routed: int) -> list[int]:
    """Layers whose routed experts' router ``(experts, hidden)`` has a condition number above
    :data:`CONDITION_LIMIT`: some experts would hardly ever be chosen."""
    found = []
    for layer in range(gates.shape[0]):
        cond = torch.linalg.cond(gates[layer, :n_routed].to(torch.float64))
        if not torch.isfinite(cond) or float(cond) > CONDITION_LIMIT:
            found.append(layer)
    return found


def degenerate_warning(layers: list[int], num_layers: int) -> str | None:
    """The warning for :func:`degenerate_layers`' result, or None."""
    if not layers:
        return None
    if len(layers) == num_layers:
        where = "every layer's router is"
    else:
        shown = ", ".join(str(i) for i in layers[:10]) + (" ..." if len(layers) > 10 else "")
        where = f"the router of layer(s) {shown} is"
    return (
        f"{where} degenerate (condition number above {CONDITION_LIMIT:g}): the prompts of "
        "some experts are too similar, and those experts will rarely be chosen"
    )
