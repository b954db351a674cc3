"""Tokenizer handling: the output vocabulary, re-indexed embeddings, tokenizer files and chat
templates (behaviour spec §5).

The engine's order of calls:

1. no ``tokenizer`` setting: :func:`check_vocab_sizes`, later :func:`copy_tokenizer_files`;
2. otherwise :func:`build_vocabulary` once, :func:`reindex_vocab_tensor` for every
   vocabulary-axis tensor before merging it, config ``vocab_size = vocab.size``, and
   :func:`save_tokenizer`;
3. :func:`resolve_chat_template` for ``chat_template:`` before either save.

transformers / tokenizers are optional: they are imported only when a tokenizer is read.
torch is imported only when the re-indexing functions are first used, so planning and
vocabulary building stay light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meldkit.tokenizer.chat_template import (
    BUILTIN_TEMPLATES,
    builtin_template,
    read_chat_template,
    resolve_chat_template,
)
from meldkit.tokenizer.files import (
    MERGEKIT_EXTRA_FILES,
    TOKENIZER_FILES,
    copy_tokenizer_files,
    has_tokenizer,
    load_tokenizer_json,
    save_tokenizer,
    write_chat_template,
)
from meldkit.tokenizer.vocab import (
    OutputVocabulary,
    TokenRule,
    VocabModel,
    build_vocabulary,
    check_vocab_sizes,
)

if TYPE_CHECKING:
    from meldkit.tokenizer.embeddings import reindex_vocab_tensor, truncate_vocab_tensors

_LAZY = {"reindex_vocab_tensor", "truncate_vocab_tensors"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from meldkit.tokenizer import embeddings

        return getattr(embeddings, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BUILTIN_TEMPLATES",
    "MERGEKIT_EXTRA_FILES",
    "OutputVocabulary",
    "TOKENIZER_FILES",
    "TokenRule",
    "VocabModel",
    "build_vocabulary",
    "builtin_template",
    "check_vocab_sizes",
    "copy_tokenizer_files",
    "has_tokenizer",
    "load_tokenizer_json",
    "read_chat_template",
    "reindex_vocab_tensor",
    "resolve_chat_template",
    "save_tokenizer",
    "truncate_vocab_tensors",
    "write_chat_template",
]
