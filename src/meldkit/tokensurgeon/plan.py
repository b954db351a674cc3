"""Planning a transplant from headers and tokenizer files only: which tensors hold the
vocabulary, their shapes, the output layout, and every problem, reported together before any
tensor is read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from meldkit.errors import MeldError, PlanError
from meldkit.io.header import FLOAT_DTYPES
from meldkit.io.index import CheckpointIndex, open_index
from meldkit.io.writer import OutputTensorSpec
from meldkit.plan.architecture import ModelLayout, infer_layout
from meldkit.tokensurgeon.vocab import Vocabulary, read_vocabulary

__all__ = ["ModelSide", "SurgeryPlan", "plan_surgery"]


@dataclass
class ModelSide:
    """One input: its folder, tensor index, layout, tokenizer and vocabulary tensors.

    ``head`` is None when the model ties its output projection to the input embedding.
    """

    folder: Path
    index: CheckpointIndex
    layout: ModelLayout
    vocab: Vocabulary
    embed: str
    head: str | None

    @property
    def rows(self) -> int:
        """Embedding rows (the config's vocab_size, padding included)."""
        return int(self.index.tensors[self.embed].shape[0])


@dataclass
class SurgeryPlan:
    """MODEL and DONOR, the output rows, the other vocabulary tensors and the output specs."""

    model: ModelSide
    donor: ModelSide
    rows: int  # output embedding rows: the donor's
    biases: list[str]  # MODEL's 1-D vocabulary tensors (output biases), remapped by identity
    specs: list[OutputTensorSpec]

    @property
    def vocab_tensors(self) -> list[str]:
        """MODEL's tensors whose rows are rebuilt."""
        return [n for n in (self.model.embed, self.model.head, *self.biases) if n]


def _side(folder: Path, what: str, problems: list[str]) -> ModelSide | None:
    try:
        index = open_index(folder)
        vocab = read_vocabulary(folder, what)
    except MeldError as exc:
        problems.append(exc.message)
        return None
    layout = infer_layout(index.tensors, index.config)
    embed = layout.input_embedding
    if embed is None:
        problems.append(
            f"{what} ({folder}): no input embedding tensor found "
            "(looked for embed_tokens, wte, embed_in, word_embeddings, tok_embeddings)"
        )
        return None
    if layout.other_stacks:
        problems.append(
            f"{what} ({folder}): several module stacks ({', '.join(layout.other_stacks)}); "
            "only single-module (decoder-only) models are supported"
        )
    side = ModelSide(folder, index, layout, vocab, embed, layout.output_head)
    info = index.tensors[embed]
    if len(info.shape) != 2 or info.dtype not in FLOAT_DTYPES:
        problems.append(f"{what}: '{embed}' is {info.dtype} {list(info.shape)}, not a float matrix")
        return None
    if side.head is not None:
        head = index.tensors[side.head]
        if len(head.shape) != 2 or tuple(head.shape) != tuple(info.shape):
            problems.append(
                f"{what}: '{side.head}' has shape {list(head.shape)} but '{embed}' has "
                f"{list(info.shape)}; the output projection must match the embedding"
            )
    if vocab.size > side.rows:
        problems.append(
            f"{what}: the tokenizer has {vocab.size} tokens but '{embed}' has only {side.rows} rows"
        )
    return side


def _biases(side: ModelSide) -> list[str]:
    """1-D tensors indexed by vocabulary: the output projection's bias."""
    stem = (side.head or "lm_head.weight").removesuffix(".weight")
    names = [f"{stem}.bias", "final_logits_bias"]
    return [
        n
        for n in names
        if n in side.index.tensors and side.index.tensors[n].shape[-1:] == (side.rows,)
    ]


def plan_surgery(model: Path, donor: Path) -> SurgeryPlan:
    """Plan the transplant of DONOR's tokenizer onto MODEL; raises :class:`PlanError` listing
    every problem found."""
    problems: list[str] = []
    m = _side(Path(model), "MODEL", problems)
    d = _side(Path(donor), "DONOR", problems)
    if problems or m is None or d is None:
        raise PlanError(problems, hint="MODEL and DONOR must be model folders with a tokenizer")
    rows = d.rows
    biases = _biases(m)
    specs = []
    for name, info in m.index.tensors.items():
        shape = tuple(info.shape)
        if name in (m.embed, m.head):
            shape = (rows, *shape[1:])
        elif name in biases:
            shape = (*shape[:-1], rows)
        specs.append(OutputTensorSpec(name, info.dtype, shape))
    return SurgeryPlan(m, d, rows, biases, specs)
