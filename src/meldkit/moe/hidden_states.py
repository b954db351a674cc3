"""Router vectors for the ``hidden`` and ``hidden_avg`` gates: the base model's hidden states.

For every expert the base model is run over its prompts; per decoder layer the **input** hidden
state of that layer (``hidden_states[:-1]``: the embedding output and the output of every layer
but the last) is taken at the last real token (``hidden``) or averaged over the prompt's real
tokens (``hidden_avg``), averaged over the expert's prompts, the same average over its negative
prompts subtracted, and each layer's vector L2-normalised. Each prompt is prefixed with the
tokenizer's BOS token (as text, with no other special tokens added), as MergeKit does.

Two ways to run the base, with the same batching and the same reductions:

* :func:`prompt_hidden_states` with ``layer_by_layer=False``: transformers'
  ``AutoModelForCausalLM`` (the ``meldkit[hf]`` extra), in float32 on ``device``: memory is the
  model plus one batch of hidden states;
* ``layer_by_layer=True``: :mod:`meldkit.moe.layerwise` runs the Llama-family block math itself,
  one decoder layer's tensors at a time, read from the safetensors files.

Differences from MergeKit (see docs/compatibility.md): ``hidden_avg`` averages over real tokens
only (MergeKit includes the padding of shorter prompts, so a prompt's vector depends on what it
is batched with); padding is done here, on the right, without touching the tokenizer (MergeKit
sets pad = BOS and left padding on the tokenizer it then saves); the model runs in float32
(MergeKit: bfloat16).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from meldkit.errors import InputError, RecipeError
from meldkit.execute.device import resolve_device
from meldkit.io.hub import HF_HINT

if TYPE_CHECKING:
    import torch

__all__ = ["GateMode", "PromptBatch", "RouterSums", "prompt_hidden_states"]

GateMode = Literal["hidden", "hidden_avg"]
_MODES = ("hidden", "hidden_avg")
# Files one of which a Hugging Face tokenizer folder holds (fast, sentencepiece, byte-level BPE).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")
_POSITIVE, _NEGATIVE = 0, 1


@dataclass(frozen=True)
class PromptBatch:
    """A right-padded batch of tokenized prompts.

    ``input_ids``/``attention_mask``: (batch, seq) int64; ``lengths``: (batch,) real tokens per
    row; ``slots``: (batch,) ``2 * expert + sign`` (sign 0 positive, 1 negative), where each
    row's vector is summed.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    lengths: torch.Tensor
    slots: torch.Tensor

    def to(self, device: str) -> PromptBatch:
        """The same batch with every tensor on ``device``."""
        return PromptBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.lengths.to(device),
            self.slots.to(device),
        )


class RouterSums:
    """Running per-layer sums of prompt vectors per (expert, sign), and how many were added.

    Only these sums are kept between batches (never the prompts' hidden states), so memory is
    one batch plus ``layers x experts x 2 x hidden`` numbers. The sums are float64: the order in
    which prompts arrive (the batch size) then changes the result only far below float32's
    precision.
    """

    def __init__(self, num_layers: int, n_experts: int, hidden: int) -> None:
        import torch

        self.sums = torch.zeros(num_layers, 2 * n_experts, hidden, dtype=torch.float64)
        self.counts = torch.zeros(2 * n_experts, dtype=torch.float64)
        self.n_experts = n_experts

    def add(self, layer: int, batch: PromptBatch, states: torch.Tensor, mode: GateMode) -> None:
        """Add the vectors of ``batch``'s prompts from ``states`` (batch, seq, hidden), the input
        of ``layer``; the counts grow once per batch (at layer 0)."""
        import torch

        vectors = reduce_prompts(states, batch, mode).to("cpu", torch.float64)  # (batch, hidden)
        slots = batch.slots.cpu()
        self.sums[layer].index_add_(0, slots, vectors)
        if layer == 0:
            self.counts.index_add_(0, slots, torch.ones(len(slots), dtype=torch.float64))

    def finish(self) -> torch.Tensor:
        """(layers, experts, hidden) float32: positive mean minus negative mean, L2-normalised."""
        import torch

        # (layers, 2 * experts, hidden) -> (layers, experts, 2, hidden)
        sums = self.sums.reshape(self.sums.shape[0], self.n_experts, 2, -1)
        counts = self.counts.reshape(self.n_experts, 2)
        pos = sums[:, :, _POSITIVE] / counts[:, _POSITIVE, None]
        neg = sums[:, :, _NEGATIVE] / counts[:, _NEGATIVE, None].clamp(min=1)
        vectors = pos - neg  # (layers, experts, hidden)
        norms = vectors.norm(dim=-1, keepdim=True)
        zero = (norms[..., 0] == 0).nonzero()
        if len(zero):
            layer, expert = (int(v) for v in zero[0])
            raise RecipeError(
                f"experts[{expert}]: the positive and negative prompts give the same hidden "
                f"state at layer {layer}, so the router vector is zero",
                hint="give the expert negative prompts that differ from its positive ones",
            )
        rows: torch.Tensor = (vectors / norms).to(torch.float32)
        return rows


def reduce_prompts(states: torch.Tensor, batch: PromptBatch, mode: GateMode) -> torch.Tensor:
    """(batch, hidden): each row's state at its last real token, or its mean over real tokens."""
    import torch

    if mode == "hidden":
        rows = torch.arange(states.shape[0], device=states.device)
        return states[rows, batch.lengths - 1]
    real = batch.attention_mask.bool()[..., None]  # (batch, seq, 1)
    # where, not a product: a padded position's state is never read, even if it is not finite.
    total = torch.where(real, states, torch.zeros((), dtype=states.dtype, device=states.device))
    return total.sum(dim=1) / batch.lengths[:, None].to(states.dtype)


def _check_prompts(prompts: Sequence[Sequence[str]], negative: Sequence[Sequence[str]]) -> None:
    if not prompts:
        raise RecipeError(
            "no experts to compute router vectors for", hint="list the experts under 'experts'"
        )
    if len(negative) != len(prompts):
        raise ValueError(f"{len(prompts)} experts' prompts but {len(negative)} negative lists")
    for i, positive in enumerate(prompts):
        if not positive:
            raise RecipeError(
                f"experts[{i}] has no positive_prompts; the hidden and hidden_avg gates need "
                "at least one per expert",
                hint="add positive_prompts to every expert, or use gate_mode: random",
            )


def _require_transformers() -> None:
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise InputError(
            "the hidden and hidden_avg gates need transformers to tokenize the prompts and run "
            "the base model",
            hint=HF_HINT,
        ) from None


def load_tokenizer(base_dir: str) -> Any:
    """The base model's tokenizer, from its folder only (no hub access, no remote code)."""
    folder = Path(base_dir)
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise InputError(
            f"the base model '{base_dir}' has no tokenizer (none of {', '.join(_TOKENIZER_FILES)})",
            hint="the hidden and hidden_avg gates tokenize the prompts with the base model's "
            "tokenizer; copy its tokenizer files into that folder",
        )
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=False
        )
    # Any exception: transformers raises OSError, ValueError, KeyError ... for broken files.
    except Exception as exc:
        raise InputError(
            f"cannot load the tokenizer of the base model '{base_dir}': {exc}",
            hint="check the tokenizer files in that folder",
        ) from None


def tokenize_prompts(
    tokenizer: Any, prompts: Sequence[Sequence[str]], negative: Sequence[Sequence[str]]
) -> list[tuple[int, list[int]]]:
    """(slot, token ids) for every prompt: BOS text + prompt, without other special tokens."""
    bos = tokenizer.bos_token or ""
    jobs: list[tuple[int, list[int]]] = []
    for expert, lists in enumerate(zip(prompts, negative)):
        for sign, texts in enumerate(lists):
            for text in texts:
                ids = list(tokenizer(bos + text, add_special_tokens=False)["input_ids"])
                if not ids:
                    kind = "positive_prompts" if sign == _POSITIVE else "negative_prompts"
                    raise RecipeError(
                        f"experts[{expert}].{kind}: the prompt {text!r} has no tokens",
                        hint="remove empty prompts (the tokenizer has no BOS token to add)",
                    )
                jobs.append((2 * expert + sign, ids))
    return jobs


def make_batches(jobs: list[tuple[int, list[int]]], batch_size: int) -> Iterator[PromptBatch]:
    """Right-padded batches of ``batch_size`` prompts, shortest first (less padding).

    The padding id is 0; it never matters, because padded positions are masked as keys and
    never read as results.
    """
    import torch

    order = sorted(range(len(jobs)), key=lambda j: len(jobs[j][1]))
    for start in range(0, len(order), batch_size):
        rows = [jobs[j] for j in order[start : start + batch_size]]
        width = max(len(ids) for _, ids in rows)
        input_ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for r, (_, ids) in enumerate(rows):
            input_ids[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[r, : len(ids)] = 1
        yield PromptBatch(
            input_ids,
            mask,
            mask.sum(dim=1),
            torch.tensor([slot for slot, _ in rows], dtype=torch.long),
        )


def prompt_hidden_states(
    base_dir: str,
    prompts: list[list[str]],
    negative: list[list[str]],
    mode: GateMode,
    device: str = "cpu",
    layer_by_layer: bool = False,
    batch_size: int = 8,
) -> torch.Tensor:
    """Router vectors from the base model's hidden states: (layers, experts, hidden) float32.

    ``prompts[e]``/``negative[e]``: expert ``e``'s positive and negative prompts (the negative
    list may be empty). Row ``[l, e]`` is the L2-normalised mean over ``e``'s positive prompts of
    the input hidden state of decoder layer ``l`` (``mode="hidden"``: at the last token;
    ``"hidden_avg"``: the mean over the prompt's tokens), minus the same mean over its negative
    prompts. ``layer_by_layer`` runs the base one decoder layer at a time from its safetensors
    files (Llama, Mistral, Qwen2, Qwen3) instead of loading it whole with transformers.
    ``batch_size`` prompts run together; it changes only the speed and the memory.
    """
    if mode not in _MODES:
        raise RecipeError(
            f"gate mode '{mode}' does not use hidden states; expected hidden or hidden_avg"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    _check_prompts(prompts, negative)
    _require_transformers()
    device = resolve_device(device)
    tokenizer = load_tokenizer(base_dir)
    batches = list(make_batches(tokenize_prompts(tokenizer, prompts, negative), batch_size))
    if layer_by_layer:
        from meldkit.moe.layerwise import layerwise_sums

        sums = layerwise_sums(base_dir, batches, len(prompts), mode, device)
    else:
        sums = _transformers_sums(base_dir, batches, len(prompts), mode, device)
    return sums.finish()


def _transformers_sums(
    base_dir: str, batches: list[PromptBatch], n_experts: int, mode: GateMode, device: str
) -> RouterSums:
    """Run the whole base model with transformers over each batch; sum the prompt vectors."""
    import torch

    model = _load_causal_lm(base_dir, device)
    num_layers = int(model.config.num_hidden_layers)
    sums = RouterSums(num_layers, n_experts, int(model.config.hidden_size))
    with torch.no_grad():
        for batch in batches:
            on_device = batch.to(device)
            out = model(
                input_ids=on_device.input_ids,
                attention_mask=on_device.attention_mask,
                output_hidden_states=True,
                use_cache=False,
            )
            # hidden_states: the embedding output, then each layer's output, the last one after
            # the final norm; [:-1] is the input of every decoder layer.
            for layer, states in enumerate(out.hidden_states[:num_layers]):
                sums.add(layer, on_device, states.float(), mode)
            del out
    return sums


def _load_causal_lm(base_dir: str, device: str) -> Any:
    import torch
    import transformers

    # transformers 5 renamed torch_dtype to dtype (4.x before 4.56 knows only torch_dtype).
    major = int(transformers.__version__.split(".")[0])
    dtype_arg = {"dtype" if major >= 5 else "torch_dtype": torch.float32}
    # transformers' own "Loading weights" bar would interleave with meldkit's progress lines.
    hf_logging: Any = transformers.utils.logging
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model: Any = transformers.AutoModelForCausalLM.from_pretrained(
            base_dir, trust_remote_code=False, local_files_only=True, **dtype_arg
        )
    # Any exception: an unknown model type, a missing config or broken weights raise many kinds.
    except Exception as exc:
        raise InputError(
            f"cannot load the base model '{base_dir}' with transformers: {exc}",
            hint="for Llama, Mistral, Qwen2 and Qwen3 bases --layer-by-layer runs the base "
            "without transformers' model classes",
        ) from None
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    return model.to(device).eval()
