"""Re-indexing vocabulary-sized tensors into the output vocabulary (MergeKit's
PermutedVocabulary), vectorised.

Each model's tensor is rebuilt at the output size along its vocabulary axis:

* a token the model has keeps the model's own row (unless a ``force`` rule replaces it);
* a token it lacks gets the fallback row, decided per token in this order:
  1. an explicit ``tokens:`` rule (a model's row, a ``model_token`` row, or zeros);
  2. present in exactly one model -> that model's row;
  3. present in none -> zeros (logged);
  4. the base model has it -> the base's row;
  5. otherwise the mean of the models that have it;
* padding rows (``pad_to_multiple_of``) get the mean of that model's real rows.

Rows a model keeps are gathered with one ``index_select`` in its own dtype (bit-exact); only
fallback and padding rows are computed, in float32, then cast to the model's dtype. No Python
loop runs over the vocabulary: only over models and over configured tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch

from meldkit.errors import PlanError, RecipeError
from meldkit.tokenizer.vocab import OutputVocabulary, TokenRule

__all__ = ["reindex_vocab_tensor", "truncate_vocab_tensors"]

log = logging.getLogger(__name__)


def _permutation(vocab: OutputVocabulary, key: str) -> torch.Tensor:
    cached = vocab._cache.get(("perm", key))
    if cached is None:
        cached = torch.tensor(vocab.permutation(key), dtype=torch.long)  # (L,)
        vocab._cache[("perm", key)] = cached
    assert isinstance(cached, torch.Tensor)
    return cached


def _rule_row(
    rule: TokenRule, rows: Mapping[str, torch.Tensor], template: torch.Tensor, name: str
) -> torch.Tensor:
    """The float32 row a ``tokens:`` rule asks for (``template``: a row of the right shape)."""
    if rule.kind == "zero":
        return torch.zeros_like(template, dtype=torch.float32)
    assert rule.model_key is not None and rule.source_id is not None
    src = rows.get(rule.model_key)
    if src is None:
        raise RecipeError(
            f"tokenizer.tokens[{rule.token!r}]: model '{rule.model_key}' has no tensor {name}",
            hint="take the row from a model that has this tensor",
        )
    if rule.source_id >= src.shape[0]:
        raise RecipeError(
            f"tokenizer.tokens[{rule.token!r}]: {name} of '{rule.model_key}' has only "
            f"{src.shape[0]} rows (asked for row {rule.source_id})"
        )
    return src[rule.source_id].to(torch.float32)


def reindex_vocab_tensor(
    vocab: OutputVocabulary,
    tensors: Mapping[str, torch.Tensor],
    axis: int = 0,
    base_key: str | None = None,
    name: str = "tensor",
) -> dict[str, torch.Tensor]:
    """Rebuild each model's tensor at ``vocab.size`` along ``axis`` (see the module doc).

    ``tensors`` maps model keys (as in :func:`build_vocabulary`) to the tensor of one weight
    (e.g. ``model.embed_tokens.weight``, axis 0) from the models that have it. ``base_key``
    defaults to the vocabulary's base; a base without this tensor counts as absent. Returns new
    tensors in the same dtypes (the input itself when nothing changes), on the same device
    (all inputs must share one device; the small index bookkeeping follows them there).
    """
    if not tensors:
        return {}
    if base_key is None:
        base_key = vocab.base_key
    length, size = vocab.tokenizer_length, vocab.size
    keys = list(tensors)
    first = next(iter(tensors.values()))
    axis = axis % first.dim()
    moved = {k: t.movedim(axis, 0) for k, t in tensors.items()}  # (rows, *rest)
    rest = first.movedim(axis, 0).shape[1:]
    dev = first.device
    for k, t in moved.items():
        if t.shape[1:] != rest:
            raise PlanError(
                [
                    f"{name}: '{k}' has shape {tuple(tensors[k].shape)}, the others {tuple(first.shape)}"
                ],
                hint="only the vocabulary axis may differ between models",
            )

    perms: dict[str, torch.Tensor] = {}
    has: dict[str, torch.Tensor] = {}
    for k in keys:
        p = _permutation(vocab, k).to(dev)
        present = (p >= 0) & (p < moved[k].shape[0])  # (L,) ids beyond the tensor count as absent
        perms[k] = torch.where(present, p, torch.zeros_like(p))
        has[k] = present
    count = torch.stack([has[k] for k in keys]).sum(0)  # (L,)

    forced = torch.zeros(length, dtype=torch.bool, device=dev)
    configured = torch.zeros(length, dtype=torch.bool, device=dev)
    for rule in vocab.rules:
        configured[rule.out_id] = rule.kind != "default"  # a rule without a source sets no row
        if rule.force:
            forced[rule.out_id] = True
    # Rows where at least one model needs a fallback; usually a handful.
    need = (count < len(keys)) | forced
    idx = need.nonzero().flatten()  # (F,)

    fallback = torch.zeros((idx.numel(), *rest), dtype=torch.float32, device=dev)  # (F, *rest)
    if idx.numel():
        total = torch.zeros_like(fallback)
        for k in keys:
            sel = has[k][idx]
            rows = moved[k].index_select(0, perms[k][idx]).to(torch.float32)  # (F, *rest)
            total += rows * sel.view(-1, *([1] * len(rest)))
        cnt = count[idx].clamp(min=1).to(torch.float32).view(-1, *([1] * len(rest)))
        fallback = total / cnt  # exactly one model: its row; none: zeros; several: the mean
        if base_key in moved:
            base_sel = has[base_key][idx]
            base_rows = moved[base_key].index_select(0, perms[base_key][idx]).to(torch.float32)
            fallback = torch.where(base_sel.view(-1, *([1] * len(rest))), base_rows, fallback)
        position = {int(i): j for j, i in enumerate(idx.tolist())}
        for rule in vocab.rules:
            j = position.get(rule.out_id)
            if j is not None and rule.kind != "default":
                fallback[j] = _rule_row(rule, moved, fallback[j], name)
        lost = (count[idx] == 0) & ~configured[idx]
        if bool(lost.any()):
            _warn_missing(vocab, name, idx[lost])

    out: dict[str, torch.Tensor] = {}
    for k in keys:
        src = moved[k]
        replace = (~has[k][idx]) | forced[idx]  # (F,) which fallback rows this model takes
        identity = (
            src.shape[0] == length == size
            and not bool(replace.any())
            and bool(torch.equal(perms[k], torch.arange(length, device=dev)))
        )
        if identity:
            out[k] = tensors[k]
            continue
        # One allocation at the final size; the gather writes straight into it.
        rebuilt = torch.empty((size, *rest), dtype=src.dtype, device=src.device)  # (S, *rest)
        real = rebuilt[:length]  # (L, *rest) view
        torch.index_select(src, 0, perms[k], out=real)  # own rows, own dtype, bit-exact
        if bool(replace.any()):
            real[idx[replace]] = fallback[replace].to(src.dtype)
        if size > length:
            rebuilt[length:] = _mean_rows(real).to(src.dtype)  # broadcast over the padding rows
        out[k] = rebuilt.movedim(0, axis).contiguous()
    return out


def _mean_rows(rows: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """The float32 mean of ``rows`` along axis 0, accumulated in chunks so that no float32 copy
    of a whole (150k, hidden) bf16 matrix is ever made."""
    total = torch.zeros(rows.shape[1:], dtype=torch.float32, device=rows.device)  # (*rest)
    for start in range(0, rows.shape[0], chunk):
        total += rows[start : start + chunk].to(torch.float32).sum(0)
    return total / max(rows.shape[0], 1)


def _warn_missing(vocab: OutputVocabulary, name: str, ids: torch.Tensor) -> None:
    # One message per distinct set of tokens, not one per tensor.
    key = ("warned", tuple(ids.tolist()))
    if key in vocab._cache:
        return
    vocab._cache[key] = True
    tokens = [vocab.tokens[i] for i in ids.tolist()]
    shown = ", ".join(repr(t) for t in tokens[:10]) + (" ..." if len(tokens) > 10 else "")
    log.warning(
        "%s: %d tokens are in none of the models; their rows are zeros: %s",
        name,
        len(tokens),
        shown,
    )


def truncate_vocab_tensors(
    tensors: Mapping[str, torch.Tensor], axis: int = 0
) -> dict[str, torch.Tensor]:
    """Keep the common prefix along ``axis`` (``--unsafe-truncate-embeddings``; only when no
    tokenizer is built). Row ``i`` then means token ``i`` in every model, which is only right
    when the tokenizers agree on those ids."""
    if not tensors:
        return {}
    rows = min(t.shape[axis] for t in tensors.values())
    if any(t.shape[axis] != rows for t in tensors.values()):
        log.warning("truncating vocabulary tensors to the %d rows all models share", rows)
    return {k: t.narrow(axis, 0, rows) for k, t in tensors.items()}
