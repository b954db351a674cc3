"""Fine-tunes of an existing tiny model folder: base weights plus a small seeded delta.

What :func:`~meldkit.testing.make_tiny_model` does when given ``base``: configs and tokenizer
are copied (or the tokenizer is extended with new tokens, growing the vocabulary-sized tensors),
and every tensor gets a delta proportional to its own spread.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from meldkit.testing.architectures import ARCHS
from meldkit.testing.checkpoint_files import dump_json, read_model, write_weights
from meldkit.testing.tiny_tokenizer import (
    TOKENIZER_FILES,
    base_tokenizer_layout,
    write_tiny_tokenizer,
)
from meldkit.testing.values import INIT_STD, noise


def make_finetune(
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
    """Write into ``out`` a fine-tune of the model folder ``base``.

    See :func:`~meldkit.testing.make_tiny_model` (its ``base`` argument) for what is written.
    """
    cfg_file = base / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"base model {base} has no config.json")
    if out.resolve() == base.resolve():
        raise ValueError("a fine-tune must be written to a different folder than its base")
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    base_tensors = read_model(base)

    # Work out the tokenizer first: new tokens may grow the vocab-sized tensors.
    n_base, base_added, base_template = base_tokenizer_layout(base, int(cfg["vocab_size"]))
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
        new = work + scale * noise(seed, "delta:" + name, work.shape)
        if name in vocab_names and new.shape[0] < new_vocab:
            fresh = noise(seed, "grow:" + name, (new_vocab, *new.shape[1:])) * INIT_STD
            new = torch.cat([new, fresh[new.shape[0] :]])
        tensors[name] = new.to(value.dtype)

    dump_json(out / "config.json", cfg)
    gen_file = base / "generation_config.json"
    if gen_file.is_file():
        shutil.copyfile(gen_file, out / "generation_config.json")
    write_weights(out, tensors, fmt=fmt, shard_size=shard_size)
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
        for name in TOKENIZER_FILES:
            if (base / name).is_file():
                shutil.copyfile(base / name, out / name)
