"""Plan an extraction from the two models' headers alone: which module becomes a LoRA, which is
saved at full rank, which is left out, and every problem, before any tensor is read.

Tensors are paired by name. What a tensor is comes from its name and shape, as the merge planner
infers it (:func:`meldkit.plan.architecture.infer_layout`), with no per-architecture table:

* the input embedding and the other embedding tables before the layer stack (2-D);
* the output head (``lm_head``, ``embed_out``...); a model without one ties it to its input
  embedding, so a tied side stands in with that tensor;
* any other 2-D ``weight``: a linear layer, decomposed;
* 1-D weights (norms), biases of layers that are not decomposed, and anything else: saved at
  full rank through ``modules_to_save`` (left out with ``skip_undecomposable``).

Each module is handled by the first rule that applies, in MergeKit's order: not selected by
``include``/``exclude`` (left out: it keeps the base's values); named by ``save_modules`` (full
rank); an embedding or head (full rank unless ``embed_lora``); a linear layer (LoRA, its bias
saved in full when it changed); anything else (full rank).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from meldkit.config.modelref import parse_model_ref
from meldkit.errors import MeldError, PlanError
from meldkit.execute.output import check_output_folder
from meldkit.extract_lora.options import ExtractionOptions
from meldkit.io.header import TensorInfo
from meldkit.plan.architecture import is_skipped_buffer, tied_head_name
from meldkit.plan.models import InputModelInfo, open_models

__all__ = ["ExtractionPlan", "ModulePlan", "TensorPair", "plan_extraction"]

Handling = Literal["lora", "embedding_lora", "full"]
_MAX_NAMED = 3


@dataclass(frozen=True)
class TensorPair:
    """One fine-tune tensor (``name``, as the adapter names it) and its base counterpart."""

    name: str
    model: TensorInfo
    base: TensorInfo


@dataclass
class ModulePlan:
    """One module of the adapter: decomposed (``lora``, ``embedding_lora``) or saved (``full``).

    ``weight`` is the decomposed weight (LoRA only); ``tensors`` are the tensors saved at full
    rank (all the module's parameters for ``full``; the bias of a LoRA layer, when it has one).
    """

    module: str
    handling: Handling
    reason: str
    weight: TensorPair | None = None
    tensors: list[TensorPair] = field(default_factory=list)
    # A tied model's embedding saved in full is saved under the head's name too, as PEFT does
    # with ensure_weight_tying (else merge_and_unload would leave the head the old embedding).
    tied_head: str | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        first = self.weight or self.tensors[0]
        return first.model.shape


@dataclass
class ExtractionPlan:
    """Everything the extraction will do, from headers only."""

    base: InputModelInfo
    model: InputModelInfo
    out: Path
    options: ExtractionOptions
    modules: list[ModulePlan]
    left_out: list[tuple[str, str]]  # (module, why)
    warnings: list[str]
    vocab: tuple[int, int] | None  # (base rows, fine-tune rows) when the vocabulary changed
    tied: bool  # the fine-tune ties its output head to its input embedding
    fan_in_fan_out: bool = False  # weights stored (in, out), as GPT-2's Conv1D layers

    @property
    def lora_modules(self) -> list[ModulePlan]:
        return [m for m in self.modules if m.handling != "full"]


def _some(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_NAMED])
    more = len(names) - _MAX_NAMED
    return f"{shown} (+{more} more)" if more > 0 else shown


def _open(
    base: str, model: str, cache_dir: str | None
) -> tuple[InputModelInfo | None, InputModelInfo | None, list[str]]:
    problems: list[str] = []
    infos: list[InputModelInfo | None] = []
    for flag, text in (("--base", base), ("--model", model)):
        try:
            ref = parse_model_ref(text, flag)
        except MeldError as exc:
            problems.append(exc.message)
            infos.append(None)
            continue
        found, opened = open_models([ref], cache_dir=cache_dir)
        problems += opened
        infos.append(next(iter(found.values()), None))
    return infos[0], infos[1], problems


def _float_tensors(info: InputModelInfo) -> dict[str, TensorInfo]:
    return {n: t for n, t in info.index.tensors.items() if t.is_float and not is_skipped_buffer(n)}


def _tie(base: InputModelInfo, model: InputModelInfo) -> dict[str, tuple[str, str]]:
    """The output head when exactly one side ties it to its input embedding:
    ``{head name: (fine-tune tensor, base tensor)}``, the tied side giving its embedding."""
    m_head, b_head = model.layout.output_head, base.layout.output_head
    m_embed, b_embed = model.layout.input_embedding, base.layout.input_embedding
    if m_head and not b_head and b_embed:
        return {m_head: (m_head, b_embed)}
    if b_head and not m_head and m_embed:
        return {b_head: (m_embed, b_head)}
    return {}


@dataclass
class _Pairing:
    pairs: dict[str, TensorPair]
    vocab: tuple[int, int] | None  # (base rows, fine-tune rows) when the vocabulary changed
    unpaired: list[str]  # fine-tune tensors the base lacks
    mismatched: dict[str, str]  # tensor name -> problem


def _pairs(base: InputModelInfo, model: InputModelInfo, warnings: list[str]) -> _Pairing | str:
    """Pair the fine-tune's tensors with the base's (a problem when they share none)."""
    m_t, b_t = _float_tensors(model), _float_tensors(base)
    if m_t and b_t and not set(m_t) & set(b_t):
        return (
            f"{model.folder} and {base.folder} share no tensor names: they are not the same "
            "architecture"
        )
    ties = _tie(base, model)
    vocab_names = {*model.layout.vocab_tensors, *ties}
    found = _Pairing({}, None, [], {})
    for name in [n for n in m_t if n not in ties] + list(ties):
        m_name, b_name = ties.get(name, (name, name))
        mt, bt = m_t.get(m_name), b_t.get(b_name)
        if mt is None:
            continue
        if bt is None:
            found.unpaired.append(name)
            continue
        if mt.shape != bt.shape:
            same_rest = len(mt.shape) == len(bt.shape) == 2 and mt.shape[1:] == bt.shape[1:]
            if not (name in vocab_names and same_rest):
                found.mismatched[name] = (
                    f"'{name}' has shape {list(mt.shape)} in the fine-tune but "
                    f"{list(bt.shape)} in the base"
                )
                continue
            found.vocab = (bt.shape[0], mt.shape[0])
        found.pairs[name] = TensorPair(name, mt, bt)
    tied_base = {b for _, b in ties.values()}
    base_only = [n for n in b_t if n not in m_t and n not in tied_base]
    if base_only:
        warnings.append(
            f"{len(base_only)} base tensor(s) are missing from the fine-tune and keep the base's "
            f"values: {_some(base_only)}"
        )
    return found


def _module_of(name: str) -> str:
    return name.rpartition(".")[0]


def _group(pairs: dict[str, TensorPair]) -> dict[str, dict[str, TensorPair]]:
    modules: dict[str, dict[str, TensorPair]] = {}
    for name, pair in pairs.items():
        module, _, param = name.rpartition(".")
        modules.setdefault(module, {})[param] = pair
    return modules


def _saved_by_name(module: str, names: tuple[str, ...]) -> bool:
    return module in names or module.rsplit(".", 1)[-1] in names


def _decide(
    module: str,
    params: dict[str, TensorPair],
    options: ExtractionOptions,
    embedding_names: set[str],
    head_names: set[str],
    embed_lora: bool,
) -> ModulePlan | tuple[str, str]:
    """How one module is handled (a plan), or why it is left out ``(module, why)``."""
    everything = list(params.values())
    if not options.selects(module):
        return module, "not selected by --include/--exclude"
    if _saved_by_name(module, options.save_modules):
        return ModulePlan(module, "full", "--save-module", tensors=everything)
    weight = params.get("weight")
    is_matrix = weight is not None and len(weight.model.shape) == 2
    others = [p for k, p in params.items() if k != "weight"]
    if weight is not None and weight.name in embedding_names | head_names:
        kind = "embedding" if weight.name in embedding_names else "output head"
        if not embed_lora or not is_matrix:
            return ModulePlan(module, "full", kind, tensors=everything)
        handling: Handling = "embedding_lora" if weight.name in embedding_names else "lora"
        return ModulePlan(module, handling, kind, weight=weight, tensors=others)
    if is_matrix and set(params) <= {"weight", "bias"}:
        return ModulePlan(module, "lora", "linear", weight=weight, tensors=others)
    if options.skip_undecomposable:
        return module, "undecomposable (--skip-undecomposable)"
    reason = "norm" if weight is not None and len(weight.model.shape) == 1 else "undecomposable"
    return ModulePlan(module, "full", reason, tensors=everything)


def _stores_in_out(pairs: dict[str, TensorPair]) -> bool:
    """Whether the layers store weights as (in, out) (GPT-2's ``Conv1D``), told by the biases:
    a bias has the output size, which is a linear weight's first dimension and a Conv1D's
    second. Decided for the whole model, so that square layers follow the others."""
    votes = {"in_out": 0, "out_in": 0}
    for params in _group(pairs).values():
        weight, bias = params.get("weight"), params.get("bias")
        if weight is None or bias is None or len(weight.model.shape) != 2:
            continue
        rows, cols = weight.model.shape
        if rows != cols and bias.model.shape == (cols,):
            votes["in_out"] += 1
        elif rows != cols and bias.model.shape == (rows,):
            votes["out_in"] += 1
    return votes["in_out"] > 0 and votes["out_in"] == 0


def _classify(
    pairs: dict[str, TensorPair],
    b_info: InputModelInfo,
    m_info: InputModelInfo,
    options: ExtractionOptions,
    embed_lora: bool,
) -> tuple[list[ModulePlan], list[tuple[str, str]]]:
    """Every module's handling, in the fine-tune's file order, and the modules left out."""
    embeddings = {n for n in pairs if n in m_info.layout.pre or n == m_info.layout.input_embedding}
    heads = {n for n in (m_info.layout.output_head, b_info.layout.output_head) if n in pairs}
    embeddings = {n for n in embeddings if len(pairs[n].model.shape) == 2} - heads
    modules: list[ModulePlan] = []
    left_out: list[tuple[str, str]] = []
    for module, params in _group(pairs).items():
        decided = _decide(module, params, options, embeddings, heads, embed_lora)
        if isinstance(decided, ModulePlan):
            modules.append(decided)
        else:
            left_out.append(decided)
    return modules, left_out


def plan_extraction(
    base: str,
    model: str,
    out: str | Path,
    options: ExtractionOptions,
    *,
    cache_dir: str | None = None,
    overwrite: bool = False,
) -> ExtractionPlan:
    """Resolve both models, pair and classify their tensors, and check everything; raises one
    :class:`~meldkit.errors.PlanError` listing every problem found."""
    problems = options.check()
    b_info, m_info, opened = _open(base, model, cache_dir)
    problems += opened
    if problems or b_info is None or m_info is None:
        # The options must be sound before the modules can be selected with them.
        raise PlanError(problems, hint=_hint(problems))
    warnings = [*b_info.lora_warnings, *m_info.lora_warnings]
    pairing = _pairs(b_info, m_info, warnings)
    if isinstance(pairing, str):
        raise PlanError([pairing], hint=_hint([pairing]))
    pairs, vocab = pairing.pairs, pairing.vocab
    embed_lora = options.embed_lora
    if vocab is not None and embed_lora:
        warnings.append(
            f"the vocabulary changed ({vocab[0]} -> {vocab[1]} rows): --embed-lora is turned off "
            "and the embeddings are saved at full rank"
        )
        embed_lora = False
    modules, left_out = _classify(pairs, b_info, m_info, options, embed_lora)
    problems += [p for n, p in pairing.mismatched.items() if options.selects(_module_of(n))]
    missing = [n for n in pairing.unpaired if options.selects(_module_of(n))]
    if missing:
        problems.append(
            f"{len(missing)} fine-tune tensor(s) have no counterpart in the base, and an adapter "
            f"can only change the base's tensors: {_some(missing)}"
        )
    for name in options.save_modules:
        if not any(_saved_by_name(m, (name,)) for m in _group(pairs)):
            problems.append(f"--save-module '{name}' matches no module of the fine-tune")
    if not problems and not modules:
        problems.append("no module is left to extract (every module is left out)")
    try:
        check_output_folder(Path(out), [b_info.folder, m_info.folder], overwrite)
    except MeldError as exc:
        problems.append(exc.message)
    if problems:
        raise PlanError(problems, hint=_hint(problems))
    tied = m_info.layout.output_head is None and m_info.layout.input_embedding is not None
    head = tied_head_name(m_info.layout)
    for m in modules:
        embedding = m.handling == "full" and m.tensors[0].name == m_info.layout.input_embedding
        if tied and embedding and head not in pairs:  # (a base with a head pairs it already)
            m.tied_head = head
    return ExtractionPlan(
        b_info,
        m_info,
        Path(out),
        options,
        modules,
        left_out,
        warnings,
        vocab,
        tied,
        fan_in_fan_out=_stores_in_out(pairs),
    )


def _hint(problems: list[str]) -> str:
    if any("regular expression" in p for p in problems):
        return "fix the pattern (Python `re` syntax)"
    if any("shape" in p or "share no tensor" in p or "counterpart" in p for p in problems):
        return "--base must be the model the fine-tune was trained from (exclude the rest with --exclude)"
    if any(p.startswith("--") for p in problems):
        return "see `meldkit extract-lora --help` for the options"
    return "fix the options or the model references"
