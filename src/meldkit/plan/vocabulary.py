"""Planning the output vocabulary when a recipe sets ``tokenizer`` / ``tokenizer_source``.

The vocabulary is built from tokenizer files only (no tensor bytes). Every vocabulary-sized
tensor is then planned at the output size and re-indexed per model when it is computed.
"""

from __future__ import annotations

from typing import Any

from meldkit.config.schema import MergeConfig
from meldkit.errors import MeldError
from meldkit.plan.architecture import find_config_key, set_config_key
from meldkit.plan.models import InputModelInfo
from meldkit.plan.parameters import ProblemLog

__all__ = ["plan_vocabulary", "plan_chat_template"]


def _rows(info: InputModelInfo) -> int:
    """The model's vocabulary size: its embedding rows, else config ``vocab_size``."""
    emb = info.layout.input_embedding
    if emb is not None:
        return info.index.tensors[emb].shape[0]
    found = find_config_key(info.config, ("vocab_size",))
    return int(found[1]) if found else 0


def plan_vocabulary(
    config: MergeConfig,
    models: dict[str, InputModelInfo],
    donor: str,
    tensors: list[Any],
    log: ProblemLog,
) -> Any:
    """Build the output vocabulary and resize the plan's vocabulary tensors; None without a
    tokenizer setting."""
    if config.tokenizer is None:
        return None
    from meldkit.tokenizer import VocabModel, build_vocabulary

    order = [donor] + [k for k in models if k != donor]
    vocab_models = [VocabModel(k, models[k].folder, _rows(models[k])) for k in order]
    try:
        vocab = build_vocabulary(config.tokenizer, vocab_models, donor)
    except MeldError as exc:
        log.problem(("tokenizer",), exc.message + (f" ({exc.hint})" if exc.hint else ""))
        return None
    for t in tensors:
        if t.vocab_axis is not None:
            t.shape = (vocab.size, *t.shape[1:])
            t.copy = False  # rows are re-indexed, so never a byte copy
            t.vocabulary = vocab
    return vocab


def update_vocab_size(out_config: dict[str, Any] | None, vocab: Any) -> None:
    """Set ``vocab_size`` (top level or ``text_config``) to the output vocabulary's size."""
    if out_config is None or vocab is None:
        return
    found = find_config_key(out_config, ("vocab_size",))
    set_config_key(out_config, found[0] if found else "vocab_size", vocab.size)


def plan_chat_template(
    config: MergeConfig, models: dict[str, InputModelInfo], log: ProblemLog
) -> str | None:
    """Resolve ``chat_template:`` now, so a bad template fails before any computation."""
    if config.chat_template is None:
        return None
    from meldkit.tokenizer import resolve_chat_template

    try:
        return resolve_chat_template(config.chat_template, [m.folder for m in models.values()])
    except MeldError as exc:
        log.problem(("chat_template",), exc.message + (f" ({exc.hint})" if exc.hint else ""))
        return None
