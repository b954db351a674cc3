"""The public factories for tiny model folders: one model, a family, and its expected tensors.

:func:`make_tiny_model` writes ``config.json``, ``generation_config.json``, the weights and a
tokenizer for an :data:`~meldkit.testing.architectures.ARCHS` entry (or, given ``base``, a
fine-tune of an existing folder via :mod:`meldkit.testing.finetunes`);
:func:`make_model_family` writes a base and its fine-tunes; :func:`expected_tensor_shapes` says
what a model would hold without writing it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from meldkit.testing.architectures import TRANSFORMERS_LAYOUT_VERSION, lookup
from meldkit.testing.checkpoint_files import DTYPE_NAMES, dump_json, parse_dtype, write_weights
from meldkit.testing.finetunes import make_finetune
from meldkit.testing.specs import ArchSpec, ModelDims
from meldkit.testing.tiny_tokenizer import BOS_ID, EOS_ID, write_tiny_tokenizer
from meldkit.testing.values import init_tensor


def config_dict(
    spec: ArchSpec, dims: ModelDims, *, tie: bool, dtype: torch.dtype
) -> dict[str, Any]:
    """The whole ``config.json`` of ``spec`` at ``dims``: its own keys plus the common ones."""
    cfg = spec.config(dims)
    cfg.update(
        architectures=[spec.architecture],
        bos_token_id=BOS_ID,
        dtype=DTYPE_NAMES[dtype],
        eos_token_id=EOS_ID,
        model_type=spec.model_type,
        pad_token_id=None,
        tie_word_embeddings=tie,
        transformers_version=TRANSFORMERS_LAYOUT_VERSION,
        use_cache=True,
        vocab_size=dims.vocab,
    )
    return cfg


def generation_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``generation_config.json`` that goes with the model config ``cfg``."""
    # save_pretrained writes only the non-default generation fields taken from the model config.
    gen: dict[str, Any] = {
        "_from_model_config": True,
        "output_attentions": False,
        "output_hidden_states": False,
        "transformers_version": TRANSFORMERS_LAYOUT_VERSION,
        "use_cache": True,
    }
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if cfg.get(key) is not None:
            gen[key] = cfg[key]
    return gen


def expected_tensor_shapes(
    arch: str = "llama",
    *,
    num_layers: int = 2,
    hidden: int = 16,
    intermediate: int = 32,
    vocab: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    num_experts: int = 4,
    tie_embeddings: bool | None = None,
    legacy_moe_names: bool = True,
) -> dict[str, tuple[int, ...]]:
    """``{tensor name: shape}`` that :func:`make_tiny_model` would write, in model order."""
    spec = lookup(arch)
    dims = spec.dims(
        num_layers=num_layers,
        hidden=hidden,
        intermediate=intermediate,
        vocab=vocab,
        heads=heads,
        kv_heads=kv_heads,
        num_experts=num_experts,
    )
    tie = spec.tie_default if tie_embeddings is None else tie_embeddings
    return {t.name: t.shape for t in spec.tensors(dims, tie=tie, legacy_moe_names=legacy_moe_names)}


def make_tiny_model(
    path: str | Path,
    arch: str = "llama",
    *,
    num_layers: int = 2,
    hidden: int = 16,
    intermediate: int = 32,
    vocab: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    num_experts: int = 4,
    seed: int = 0,
    dtype: str = "float32",
    shard_size: int | None = None,
    tie_embeddings: bool | None = None,
    with_tokenizer: bool = True,
    fmt: str = "safetensors",
    base: str | Path | None = None,
    delta_scale: float = 0.05,
    legacy_moe_names: bool = True,
    added_tokens: Sequence[str] | None = None,
    chat_template: str | None = None,
) -> Path:
    """Write a tiny Hugging Face model folder and return its path.

    The folder holds ``config.json`` and ``generation_config.json`` as transformers writes them
    for ``arch``, the weights (``model.safetensors``; several ``model-0000i-of-0000N`` shards
    plus ``model.safetensors.index.json`` when ``shard_size`` bytes is exceeded;
    ``pytorch_model.bin`` when ``fmt="bin"``), and unless ``with_tokenizer=False`` a tiny
    tokenizer (see :func:`write_tiny_tokenizer`). Values are deterministic in ``seed``; with
    tied embeddings (``tie_embeddings``, default: the architecture's usual choice) no output
    projection is written, as transformers does.

    ``vocab`` is the base tokenizer's size; the model's ``vocab_size`` is
    ``vocab + len(added_tokens)`` so every token id has an embedding row.

    ``legacy_moe_names`` (MoE archs): ``True`` writes the per-expert
    ``block_sparse_moe.experts.N.w1/w2/w3`` layout that ``save_pretrained`` writes by default;
    ``False`` writes transformers v5's fused runtime layout
    (``mlp.gate``, ``mlp.experts.gate_up_proj``, ``mlp.experts.down_proj``). Both hold the same
    numbers.

    With ``base`` (a folder), writes a "fine-tune" of it instead: every tensor becomes
    ``base + delta_scale * std(base tensor) * noise(seed)``, keeping names and dtypes;
    ``config.json``/``generation_config.json`` are copied from ``base``, and the architecture,
    size and dtype arguments are ignored. The tokenizer is copied from ``base`` too, unless
    ``added_tokens``/``chat_template`` are given: then it is rewritten with ``base``'s tokens plus
    the new ones, and the embedding/output rows grow to match (new rows are fresh random).
    """
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    if base is not None:
        make_finetune(
            out,
            Path(base),
            seed=seed,
            delta_scale=delta_scale,
            shard_size=shard_size,
            fmt=fmt,
            with_tokenizer=with_tokenizer,
            added_tokens=added_tokens,
            chat_template=chat_template,
        )
        return out

    spec = lookup(arch)
    extra = list(added_tokens or ())
    dims = spec.dims(
        num_layers=num_layers,
        hidden=hidden,
        intermediate=intermediate,
        vocab=vocab + len(extra),
        heads=heads,
        kv_heads=kv_heads,
        num_experts=num_experts,
    )
    torch_dtype = parse_dtype(dtype)
    tie = spec.tie_default if tie_embeddings is None else tie_embeddings
    cfg = config_dict(spec, dims, tie=tie, dtype=torch_dtype)
    dump_json(out / "config.json", cfg)
    dump_json(out / "generation_config.json", generation_config(cfg))
    tensors = {
        t.name: init_tensor(t, seed, spec.norm_center).to(torch_dtype)
        for t in spec.tensors(dims, tie=tie, legacy_moe_names=legacy_moe_names)
    }
    write_weights(out, tensors, fmt=fmt, shard_size=shard_size)
    if with_tokenizer:
        write_tiny_tokenizer(out, vocab, added_tokens=extra, chat_template=chat_template)
    return out


def make_model_family(
    root: str | Path, arch: str = "llama", n: int = 2, **kw: Any
) -> tuple[Path, list[Path]]:
    """Write ``root/base`` and ``n`` fine-tunes ``root/ft1`` ... ``root/ftN`` of it.

    ``kw`` goes to every :func:`make_tiny_model` call. The base uses ``seed`` (default 0) and
    fine-tune ``i`` uses ``seed + i``, so each fine-tune has its own delta.
    """
    root = Path(root)
    seed = int(kw.pop("seed", 0))
    kw.pop("base", None)
    base = make_tiny_model(root / "base", arch, seed=seed, **kw)
    fts = [
        make_tiny_model(root / f"ft{i}", arch, seed=seed + i, base=base, **kw)
        for i in range(1, n + 1)
    ]
    return base, fts
