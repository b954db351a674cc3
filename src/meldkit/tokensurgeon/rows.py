"""Rebuilding MODEL's vocabulary tensors in the donor's id order.

Only the embedding, the output projection (when untied) and output biases are read, from
both models; everything else streams through :mod:`meldkit.tokensurgeon.run` as a byte copy.
Math is float32 (float64 when MODEL is float64) on the chosen device; each rebuilt tensor is
cast to MODEL's dtype once, at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from meldkit.io.reader import TensorReader
from meldkit.tokensurgeon.approximate import (
    Combination,
    interpolation_weights,
    omp_combination,
    statistical_rows,
    subword_combination,
)
from meldkit.tokensurgeon.assign import RowAssignment, assign_rows, magikarp_bad_ids, shared_pairs
from meldkit.tokensurgeon.options import SurgeonOptions
from meldkit.tokensurgeon.plan import ModelSide, SurgeryPlan

__all__ = ["Matrices", "RebuiltRows", "load_matrices", "approximate", "rebuild_rows"]


@dataclass
class Matrices:
    """The four vocabulary matrices (float32, on the compute device); ``*_head`` is None when
    that model ties its output projection to its embedding. ``bad_*``: Magikarp's
    under-trained ids (empty without the filter)."""

    model_embed: torch.Tensor
    model_head: torch.Tensor | None
    donor_embed: torch.Tensor
    donor_head: torch.Tensor | None
    bad_model: set[int] = field(default_factory=set)
    bad_donor: set[int] = field(default_factory=set)

    def pair(self, matrix: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(MODEL's matrix, the donor matrix its dictionary comes from) for "embed" or
        "lm_head"; a tied donor lends its embedding to the output projection."""
        if matrix == "embed":
            return self.model_embed, self.donor_embed
        assert self.model_head is not None
        donor = self.donor_head if self.donor_head is not None else self.donor_embed
        return self.model_head, donor


@dataclass
class RebuiltRows:
    """The rebuilt tensors (MODEL's dtype, CPU) and each matrix's row assignment."""

    tensors: dict[str, torch.Tensor]
    assignments: dict[str, RowAssignment]


def _compute_dtype(code: str) -> torch.dtype:
    return torch.float64 if code == "F64" else torch.float32


def _read(reader: TensorReader, side: ModelSide, name: str, device: str) -> torch.Tensor:
    info = side.index.tensors[name]
    return reader.read(info).to(device=device, dtype=_compute_dtype(info.dtype))


def load_matrices(plan: SurgeryPlan, reader: TensorReader, options: SurgeonOptions) -> Matrices:
    """Read the vocabulary matrices of both models (and run the Magikarp filter if asked)."""
    m, d, dev = plan.model, plan.donor, options.device
    mats = Matrices(
        _read(reader, m, m.embed, dev),
        _read(reader, m, m.head, dev) if m.head else None,
        _read(reader, d, d.embed, dev),
        _read(reader, d, d.head, dev) if d.head else None,
    )
    if options.magikarp:
        mats.bad_model = magikarp_bad_ids(m.vocab, mats.model_embed, mats.model_head)
        mats.bad_donor = magikarp_bad_ids(d.vocab, mats.donor_embed, mats.donor_head)
    return mats


def _generator(seed: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 7919 + salt)


def subword_pieces(
    plan: SurgeryPlan, donor_ids: list[int], exclude: list[int] | None = None
) -> list[list[int]]:
    """MODEL's token ids for each donor token's text (none for special and byte tokens).
    ``exclude[i]``: a MODEL id target ``i`` may not use (the held-out evaluation hides the
    token itself; then the text is tokenised character by character)."""
    tokenizer, rows = plan.model.vocab.tokenizer, plan.model.rows
    texts = [plan.donor.vocab.text_of(i) for i in donor_ids]
    encoded = tokenizer.encode_batch([t or "" for t in texts], add_special_tokens=False)
    out: list[list[int]] = []
    for n, (text, enc) in enumerate(zip(texts, encoded, strict=True)):
        ids = [t for t in enc.ids if t < rows] if text else []
        if text and exclude is not None and exclude[n] in ids:
            ids = [
                t
                for ch in text
                for t in tokenizer.encode(ch, add_special_tokens=False).ids
                if t < rows and t != exclude[n]
            ]
        out.append(ids)
    return out


def approximate(
    method: str,
    matrix: str,
    plan: SurgeryPlan,
    mats: Matrices,
    shared: tuple[list[int], list[int]],
    targets: list[int],
    options: SurgeonOptions,
    cache: dict[tuple[object, ...], Combination],
    exclude: list[int] | None = None,
) -> torch.Tensor:
    """Rows (len(targets), hidden) float32 for donor ids ``targets`` of ``matrix``, from the
    dictionary ``shared`` = (donor ids, MODEL ids)."""
    model_matrix, donor_matrix = mats.pair(matrix)
    if not targets:
        return model_matrix.new_zeros(0, model_matrix.shape[1])
    donor_ids, model_ids = shared
    if method in ("omp", "common_interpolation") and donor_ids:
        key = (method, id(donor_matrix), tuple(targets), tuple(donor_ids))
        if key not in cache:
            build = omp_combination if method == "omp" else interpolation_weights
            dev = donor_matrix.device
            cache[key] = build(
                donor_matrix[torch.tensor(donor_ids, device=dev)],
                torch.tensor(model_ids, device=dev),
                donor_matrix[torch.tensor(targets, device=dev)],
                options,
            )
        return cache[key].apply(model_matrix)
    if method == "subword":
        mean = model_matrix[: plan.model.vocab.size].mean(dim=0, keepdim=True)
        extended = torch.cat([model_matrix, mean])  # (rows + 1, hidden): the fallback row
        pieces = subword_pieces(plan, targets, exclude)
        combo = subword_combination(pieces, options.subword_method, matrix, model_matrix.shape[0])
        return combo.apply(extended)
    # mean / zero / randn / john_hewitt (and omp or interpolation with an empty dictionary)
    fallback = method if method in ("zero", "randn", "john_hewitt") else "mean"
    salt = 0 if matrix == "embed" else 1
    rows = statistical_rows(
        fallback,
        model_matrix[: plan.model.vocab.size],
        len(targets),
        _generator(options.seed, salt),
    )
    return rows.to(model_matrix.device)


def _finish_rows(rows: torch.Tensor, matrix: str, options: SurgeonOptions) -> torch.Tensor:
    """``--new-vocab-scale`` then ``--new-vocab-noise`` (seeded, drawn on CPU)."""
    if options.new_vocab_scale is not None:
        rows = rows * options.new_vocab_scale
    if options.new_vocab_noise:
        gen = _generator(options.seed, 10 + (matrix == "lm_head"))
        noise = torch.randn(rows.shape, generator=gen) * options.new_vocab_noise
        rows = rows + noise.to(rows.device, rows.dtype)
    return rows


def rebuild_rows(plan: SurgeryPlan, mats: Matrices, options: SurgeonOptions) -> RebuiltRows:
    """Assign and build every output row of MODEL's embedding, output projection and biases."""
    m, d = plan.model, plan.donor
    tensors: dict[str, torch.Tensor] = {}
    assignments: dict[str, RowAssignment] = {}
    cache: dict[tuple[object, ...], Combination] = {}
    matrices = [("embed", m.embed)] + ([("lm_head", m.head)] if m.head else [])
    for matrix, name in matrices:
        a = assign_rows(
            m.vocab, m.rows, d.vocab, plan.rows, options, matrix, mats.bad_model, mats.bad_donor
        )
        model_matrix, _ = mats.pair(matrix)
        out = model_matrix.new_zeros(plan.rows, model_matrix.shape[1])
        copied = [i for i, s in enumerate(a.sources) if s >= 0]
        if copied:
            dst = torch.tensor(copied, device=out.device)
            src = torch.tensor([a.sources[i] for i in copied], device=out.device)
            out[dst] = model_matrix[src]
        targets = a.ids("approximated")
        if targets:
            shared = shared_pairs(a, mats.bad_donor)
            rows = approximate(
                options.approximation, matrix, plan, mats, shared, targets, options, cache
            )
            out[torch.tensor(targets, device=out.device)] = _finish_rows(rows, matrix, options)
        dtype = m.index.tensors[name].dtype
        tensors[name] = _cast(out, dtype)
        assignments[matrix] = a
    for name in plan.biases:
        tensors[name] = _remap_bias(plan, name, assignments["embed"])
    return RebuiltRows(tensors, assignments)


def _cast(x: torch.Tensor, code: str) -> torch.Tensor:
    from meldkit.io.dtypes import torch_dtype

    return x.to(device="cpu", dtype=torch_dtype(code)).contiguous()


def _remap_bias(plan: SurgeryPlan, name: str, a: RowAssignment) -> torch.Tensor:
    """An output bias, by exact token identity; zeros for every other row."""
    info = plan.model.index.tensors[name]
    with TensorReader() as reader:
        bias = reader.read(info).float()
    out = bias.new_zeros(*bias.shape[:-1], plan.rows)
    exact = a.ids("exact")
    if exact:
        out[..., torch.tensor(exact)] = bias[..., torch.tensor([a.sources[i] for i in exact])]
    return _cast(out, info.dtype)
