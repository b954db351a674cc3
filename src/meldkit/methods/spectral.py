"""Shared pieces of the spectral methods (tsv, iso_c, iso_cts, wudi): the common frame of a
merge (task vectors, which tensors count as matrices, ``b + scale · Δ``), top-k SVDs and the
polar factor.

Everything runs on the inputs' device in float32 (float64 when an input is float64); random
draws (the randomized SVD's sketch) come from a CPU generator keyed by the tensor name and are
moved to the device, so every run, device and ``--random-seed`` gives the same factors up to
float rounding: the methods are not random, only their factorisation is.

**How a factorisation is computed** (:func:`svd_route` decides, for an ``m × n`` matrix,
``r = min(m, n)``, of which the top ``k`` triplets are needed):

* ``randomized`` when ``4 (k + OVERSAMPLE) ≤ r`` and ``r ≥ RANDOMIZED_MIN_RANK``: a seeded
  subspace iteration (``~(2 POWER_ITERATIONS + 2)·m·n·(k + 10)`` flops).
* ``gram`` when ``k < r`` or the matrix is at least ``GRAM_MIN_ASPECT`` times longer than wide:
  ``eigh`` of the ``r × r`` Gram matrix (``MᵀM`` or ``MMᵀ``, the smaller), formed and
  factorised in float64, then the other factor by one float32 product. Squaring squares the
  condition number, and a float32 Gram loses the small directions (TSV-M's polar factor
  mixes every column, so they matter: a float32 Gram changed TSV-M's result by 4–12% on
  low-rank-plus-noise task vectors, float64 by as little as float32's own SVD). In float64 the
  factors of float32 inputs are as good as ``torch.linalg.svd``'s while every eigenvalue
  needed is at least ``GRAM_MIN_RATIO`` (1e-9) of the largest (singular values down to 3e-5
  of the largest); below that, and for a zero matrix, the exact SVD is computed instead
  (float64 inputs: ``GRAM_MIN_RATIO_F64`` = 1e-3, errors about 1e-13). On 2 CPU cores this
  costs 0.7 s against 1.0 s for ``torch.linalg.svd`` at 1536², 1.1 s against 1.7 s at
  4096 × 1536 and 4.6 s against 6.9 s at 32000 × 1536 (for a whole spectrum, the polar factor
  adds an ``r³`` float64 product, so that is only worth it on a vocabulary-sized matrix:
  ``GRAM_MIN_ASPECT`` is 8).
* ``exact`` otherwise (a square-ish matrix whose whole spectrum is needed, where the smallest
  singular values are usually far below the largest): ``torch.linalg.svd(full_matrices=False)``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch

from meldkit.methods.inputs import non_base, param_float
from meldkit.methods.registry import MergeContext

__all__ = [
    "work_dtype",
    "task_vectors",
    "is_embedding_or_head",
    "treat_as_matrix",
    "mean_of",
    "merge_matrices",
    "svd_route",
    "top_svd",
    "polar",
    "polar_and_spectrum",
]

OVERSAMPLE = 10
POWER_ITERATIONS = 4
RANDOMIZED_MIN_RANK = 256
GRAM_MIN_RATIO = 1e-9
GRAM_MIN_RATIO_F64 = 1e-3
GRAM_MIN_ASPECT = 8

SvdRoute = Literal["randomized", "gram", "exact"]

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


def merge_matrices(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: MergeContext,
    delta: Callable[[list[torch.Tensor]], torch.Tensor],
    *,
    scale: str = "alpha",
    weighted: bool = True,
) -> torch.Tensor:
    """The frame every spectral method shares: ``out = b + shared[scale] · Δ``, with
    ``Δ = delta(τ)`` for a tensor :func:`treat_as_matrix` accepts (under the method's
    ``embeddings`` parameter) and ``Δ = mean_t τ_t`` for every other one. ``delta`` gets the
    list of task vectors (``weight``-scaled when ``weighted``) and may reuse or clear it."""
    base, taus = task_vectors(inputs, base_index, per_input, weighted=weighted)
    if not taus:
        return base
    factor = param_float(shared, scale, 1.0)
    embeddings = str(shared.get("embeddings") or "matrix")
    if treat_as_matrix(base.shape, ctx.name, embeddings):
        merged = delta(taus)
    else:
        merged = mean_of(taus)
    taus.clear()
    return merged.mul_(factor).add_(base)


def svd_route(shape: Sequence[int], k: int) -> SvdRoute:
    """How the top ``k`` singular triplets of a matrix of ``shape`` are computed (see the
    module docstring); ``k`` is capped at ``min(shape)``."""
    rank = min(shape)
    k = min(k, rank)
    if rank >= RANDOMIZED_MIN_RANK and 4 * (k + OVERSAMPLE) <= rank:
        return "randomized"
    if k < rank or max(shape) >= GRAM_MIN_ASPECT * rank:
        return "gram"
    return "exact"


def top_svd(
    matrix: torch.Tensor, k: int, ctx: MergeContext, salt: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top ``k`` singular triplets ``(U_k, s_k, Vh_k)`` of a 2-D ``matrix``:
    ``U_k`` (m × k), ``s_k`` (k,), ``Vh_k`` (k × n), with ``k`` capped at ``min(m, n)``;
    computed as :func:`svd_route` says (stream ``salt`` seeds the randomized route)."""
    k = min(k, min(matrix.shape))
    if k == 0:  # Iso-CTS with no common part
        m, n = matrix.shape
        return matrix.new_zeros(m, 0), matrix.new_zeros(0), matrix.new_zeros(0, n)
    route = svd_route(matrix.shape, k)
    if route == "randomized":
        # Seeded by the tensor name only: the sketch is a means to the top-k triplets, so the
        # merge stays a deterministic function of its inputs, whatever --random-seed says.
        generator = MergeContext(ctx.name).generator(salt)
        return _randomized_svd(matrix, k, generator)
    if route == "gram":
        triplets = _gram_svd(matrix, k)
        if triplets is not None:
            return triplets
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    return u[:, :k], s[:k], vh[:k]


def _gram_eigh(matrix: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The top ``k`` eigenpairs ``(λ, Q)`` (descending, float64; ``Q`` is r × k) of the
    smaller Gram matrix (``MᵀM`` for a tall ``M``, ``MMᵀ`` for a wide one), or ``None`` when
    the ``k``-th is below the route's floor times the largest (or the matrix is zero), or when
    its singular value ``√λ`` would be too small for the matrix's dtype to divide by (below
    ``tiny / eps``, 1e-31 in float32: the products it scales would be subnormal)."""
    gram = _gram64(matrix)  # (r, r)
    values, vectors = torch.linalg.eigh(gram)  # ascending
    del gram
    values = values.flip(0)[:k]
    top, last = float(values[0]), float(values[-1])
    floor = GRAM_MIN_RATIO if matrix.dtype == torch.float32 else GRAM_MIN_RATIO_F64
    info = torch.finfo(matrix.dtype)
    if not top > 0 or last < floor * top or last < (info.tiny / info.eps) ** 2:
        return None
    return values, vectors.flip(1)[:, :k]


def _gram64(matrix: torch.Tensor) -> torch.Tensor:
    """The smaller Gram matrix of ``matrix`` in float64, summed over blocks of its long side
    so that no float64 copy of the whole matrix is made (a vocabulary-sized one would double
    the method's memory)."""
    tall = matrix.shape[0] >= matrix.shape[1]
    long_side = matrix if tall else matrix.T  # (long, r) view
    r = long_side.shape[1]
    gram = torch.zeros(r, r, dtype=torch.float64, device=matrix.device)
    for start in range(0, long_side.shape[0], _GRAM_BLOCK):
        block = long_side[start : start + _GRAM_BLOCK].double()  # (block, r)
        gram.addmm_(block.T, block)
    return gram


# Rows of the long side per float64 block of the Gram sum (4096 × 1536 × 8 B = 50 MB).
_GRAM_BLOCK = 4096


def _gram_svd(
    matrix: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The top ``k`` triplets from the Gram matrix's eigenpairs, or ``None`` (see above)."""
    pairs = _gram_eigh(matrix, k)
    if pairs is None:
        return None
    values, vectors = (x.to(matrix.dtype) for x in pairs)
    s = values.sqrt()
    if matrix.shape[0] >= matrix.shape[1]:  # vectors are V_k (n × k)
        return (matrix @ vectors).div_(s), s, vectors.T
    return vectors, s, (vectors.T @ matrix).div_(s[:, None])  # vectors are U_k (m × k)


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


def polar_and_spectrum(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(P Qᵀ, σ)`` for ``matrix = P diag(σ) Qᵀ`` (thin SVD, ``r = min(m, n)`` values,
    descending): the orthogonal polar factor, the nearest matrix with orthonormal columns
    (rows, when it is wider than tall) in Frobenius norm, and the singular values."""
    rank = min(matrix.shape)
    if svd_route(matrix.shape, rank) == "gram":
        pairs = _gram_eigh(matrix, rank)
        if pairs is not None:
            values, vectors = pairs
            # P Qᵀ = M (MᵀM)^(-1/2) for a tall M, (MMᵀ)^(-1/2) M for a wide one.
            root = ((vectors / values.sqrt()) @ vectors.T).to(matrix.dtype)  # (r, r)
            s = values.sqrt().to(matrix.dtype)
            tall = matrix.shape[0] >= matrix.shape[1]
            return (matrix @ root if tall else root @ matrix), s
    p, s, qh = torch.linalg.svd(matrix, full_matrices=False)
    return p @ qh, s


def polar(matrix: torch.Tensor) -> torch.Tensor:
    """The orthogonal polar factor ``P Qᵀ`` of ``matrix`` (see :func:`polar_and_spectrum`)."""
    return polar_and_spectrum(matrix)[0]
