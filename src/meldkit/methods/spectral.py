"""Shared pieces of the spectral methods (tsv, iso_c, iso_cts, wudi): task vectors, which
tensors count as matrices, truncated SVDs and the polar factor.

Everything runs on the inputs' device in float32 (float64 when an input is float64); random
draws (the randomized SVD's sketch) come from a CPU generator keyed by the tensor name and are
moved to the device, so every run, device and ``--random-seed`` gives the same factors up to
float rounding: the methods are not random, only their factorisation is.

**Exact or randomized SVD.** A method that needs only the top ``k`` triplets of an ``m × n``
matrix (``r = min(m, n)``) gets them from a randomized subspace iteration when
``4 (k + OVERSAMPLE) ≤ r`` and ``r ≥ RANDOMIZED_MIN_RANK`` (a quarter of the spectrum or less of
a large matrix: there ``~(2 POWER_ITERATIONS + 2)·m·n·(k + 10)`` flops beat the exact thin SVD's
``~m·n·r`` times LAPACK's larger constant), and from ``torch.linalg.svd(full_matrices=False)``
otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from meldkit.methods.inputs import non_base, param_float
from meldkit.methods.registry import MergeContext

__all__ = [
    "work_dtype",
    "task_vectors",
    "is_embedding_or_head",
    "treat_as_matrix",
    "mean_of",
    "top_svd",
    "polar",
]

OVERSAMPLE = 10
POWER_ITERATIONS = 4
RANDOMIZED_MIN_RANK = 256

# Input embeddings and output heads across the architectures meldkit knows (see
# meldkit.plan.architecture): names ending in one of these.
_EMBEDDING_OR_HEAD = re.compile(
    r"(embed_tokens|\bwte|embed_in|word_embeddings|tok_embeddings|lm_head|embed_out)\.weight$"
    r"|^output\.weight$"
)


def work_dtype(inputs: Sequence[torch.Tensor]) -> torch.dtype:
    """float64 when an input is float64, float32 otherwise."""
    return torch.float64 if any(x.dtype == torch.float64 for x in inputs) else torch.float32


def task_vectors(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    per_input: Sequence[Mapping[str, Any]],
    *,
    weighted: bool = False,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(base, [τ_t])`` in the math dtype, ``τ_t = x_t − base`` in recipe order; with
    ``weighted``, each τ_t is multiplied by its model's ``weight`` (default 1)."""
    assert base_index is not None, "this method needs a base model"
    work = work_dtype(inputs)
    base = inputs[base_index].to(work)
    taus = []
    for operand in non_base(inputs, base_index, per_input):
        tau = operand.tensor.to(work) - base  # fresh: scaling it in place is safe
        if weighted:
            weight = param_float(operand.params, "weight", 1.0)
            if weight != 1:
                tau.mul_(weight)
        taus.append(tau)
    return base, taus


def is_embedding_or_head(name: str) -> bool:
    """Whether the tensor ``name`` is a token embedding or an output (LM) head."""
    return _EMBEDDING_OR_HEAD.search(name) is not None


def treat_as_matrix(shape: torch.Size, name: str, embeddings: str) -> bool:
    """Whether a spectral method factorises this tensor: a non-empty 2-D tensor, except an
    embedding or LM head under ``embeddings: mean``. Everything else gets the mean of the task
    vectors (the papers' rule for biases and norms)."""
    if len(shape) != 2 or shape[0] == 0 or shape[1] == 0:
        return False
    return embeddings == "matrix" or not is_embedding_or_head(name)


def mean_of(taus: Sequence[torch.Tensor]) -> torch.Tensor:
    """The element-wise mean of the task vectors (a fresh tensor)."""
    total = taus[0].clone()
    for tau in taus[1:]:
        total.add_(tau)
    return total.div_(len(taus))


def top_svd(
    matrix: torch.Tensor, k: int, ctx: MergeContext, salt: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top ``k`` singular triplets ``(U_k, s_k, Vh_k)`` of a 2-D ``matrix``:
    ``U_k`` (m × k), ``s_k`` (k,), ``Vh_k`` (k × n), with ``k`` capped at ``min(m, n)``.

    Randomized (a seeded subspace iteration, stream ``salt``) for a small ``k`` of a large
    matrix, exact otherwise (see the module docstring)."""
    rank = min(matrix.shape)
    k = min(k, rank)
    if rank >= RANDOMIZED_MIN_RANK and 4 * (k + OVERSAMPLE) <= rank:
        # Seeded by the tensor name only: the sketch is a means to the top-k triplets, so the
        # merge stays a deterministic function of its inputs, whatever --random-seed says.
        generator = MergeContext(ctx.name).generator(salt)
        return _randomized_svd(matrix, k, generator)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    return u[:, :k], s[:k], vh[:k]


def _randomized_svd(
    matrix: torch.Tensor, k: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Halko-Martinsson-Tropp range finder with power iterations, re-orthonormalised by QR at
    every step so float32 keeps the small directions."""
    m, n = matrix.shape
    q = min(k + OVERSAMPLE, min(m, n))
    omega = torch.randn(n, q, generator=generator, dtype=matrix.dtype).to(matrix.device)
    basis = torch.linalg.qr(matrix @ omega).Q  # (m, q): approximates the top range
    for _ in range(POWER_ITERATIONS):
        basis = torch.linalg.qr(matrix.T @ basis).Q  # (n, q)
        basis = torch.linalg.qr(matrix @ basis).Q  # (m, q)
    u_small, s, vh = torch.linalg.svd(basis.T @ matrix, full_matrices=False)  # (q, n) problem
    return (basis @ u_small)[:, :k], s[:k], vh[:k]


def polar(matrix: torch.Tensor) -> torch.Tensor:
    """The orthogonal polar factor ``P Qᵀ`` of ``matrix = P Σ Qᵀ`` (thin SVD): the nearest
    matrix with orthonormal columns (rows, when it is wider than tall) in Frobenius norm."""
    p, _, qh = torch.linalg.svd(matrix, full_matrices=False)
    factor: torch.Tensor = p @ qh
    return factor
