"""Rows for donor tokens MODEL lacks (behaviour spec §10.1, step 5).

``omp``, ``common_interpolation`` and ``subword`` produce a :class:`Combination`: for each
target, MODEL rows and their weights. The same combination is applied to the embedding and,
when it comes from the same donor matrix, to the output projection. ``mean``, ``zero``,
``randn`` and ``john_hewitt`` produce rows directly from MODEL's matrix statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from meldkit.tokensurgeon.omp import batched_omp
from meldkit.tokensurgeon.options import SurgeonOptions

__all__ = [
    "Combination",
    "interpolation_weights",
    "omp_combination",
    "subword_combination",
    "statistical_rows",
]


@dataclass
class Combination:
    """Target ``i``'s row is ``sum_j weights[i, j] * M[indices[i, j]]`` for a MODEL matrix
    ``M``; padded entries have weight 0."""

    indices: torch.Tensor  # (targets, k) rows of MODEL's matrix
    weights: torch.Tensor  # (targets, k) float32

    def apply(self, matrix: torch.Tensor, batch: int = 4096) -> torch.Tensor:
        """The combined rows (targets, hidden) of ``matrix``, in float32 on its device."""
        m = matrix.float()
        out = torch.empty(self.indices.shape[0], m.shape[1], device=m.device)
        for s in range(0, self.indices.shape[0], batch):
            idx = self.indices[s : s + batch].to(m.device)
            w = self.weights[s : s + batch].to(m.device, torch.float32)
            acc = out[s : s + batch].zero_()  # (batch, hidden)
            # One term at a time: no (batch, k, hidden) temporary.
            for j in range(idx.shape[1]):
                acc.addcmul_(w[:, j : j + 1], m.index_select(0, idx[:, j]))
        return out


def omp_combination(
    donor_atoms: torch.Tensor,
    model_ids: torch.Tensor,
    targets: torch.Tensor,
    options: SurgeonOptions,
) -> Combination:
    """OMP codes of donor ``targets`` over the shared tokens' donor rows ``donor_atoms``, as a
    combination of the same shared tokens' MODEL rows (``model_ids[j]`` is atom ``j``'s)."""
    idx, coeffs = batched_omp(
        donor_atoms, targets, options.k, options.batch_size, options.omp_candidates
    )
    return Combination(model_ids.to(idx.device)[idx], coeffs.float())


def interpolation_weights(
    donor_atoms: torch.Tensor,
    model_ids: torch.Tensor,
    targets: torch.Tensor,
    options: SurgeonOptions,
) -> Combination:
    """``common_interpolation``: the ``k`` nearest shared tokens in donor space (Euclidean, or
    cosine with ``cosine_similarity``) and weights by ``weight_scheme``: inverse distance
    (cosine similarity with cosine) normalised to sum 1, barycentric (least squares with the
    weights summing to 1), or plain least squares."""
    atoms = donor_atoms.float()
    k = min(options.k, atoms.shape[0])
    step = targets.shape[0] if options.batch_size == -1 else options.batch_size
    idx_parts, w_parts = [], []
    for s in range(0, targets.shape[0], max(1, step)):
        x = targets[s : s + step].to(atoms.device, torch.float32)
        if options.cosine_similarity:
            sim = (
                torch.nn.functional.normalize(x, dim=1)
                @ torch.nn.functional.normalize(atoms, dim=1).T
            )
            dist = 1.0 - sim  # (batch, n)
        else:
            dist = torch.cdist(x, atoms)  # (batch, n)
        d, idx = dist.topk(k, dim=1, largest=False)
        if options.weight_scheme == "distance_proportional":
            w = (1.0 - d).clamp_min(0.0) if options.cosine_similarity else 1.0 / d.clamp_min(1e-8)
            w = w / w.sum(dim=1, keepdim=True).clamp_min(1e-12)
        else:
            w = _least_squares(atoms[idx], x, options.weight_scheme == "barycentric")
        idx_parts.append(idx)
        w_parts.append(w)
    idx_all = torch.cat(idx_parts) if idx_parts else torch.zeros(0, k, dtype=torch.long)
    w_all = torch.cat(w_parts) if w_parts else torch.zeros(0, k)
    return Combination(model_ids.to(idx_all.device)[idx_all], w_all)


def _least_squares(neighbours: torch.Tensor, x: torch.Tensor, sum_to_one: bool) -> torch.Tensor:
    """Weights ``w`` (batch, k) minimising ``|x - w @ neighbours|`` for neighbours
    (batch, k, d); with ``sum_to_one`` under the constraint ``sum(w) = 1`` (solved as the
    augmented least-squares system ``[N^T; c 1^T] w = [x; c]`` with a large weight ``c``)."""
    a = neighbours.transpose(1, 2)  # (batch, d, k)
    y = x.unsqueeze(2)  # (batch, d, 1)
    if sum_to_one:
        scale = 1e3 * a.abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
        ones = torch.ones(a.shape[0], 1, a.shape[2], device=a.device) * scale
        a = torch.cat([a, ones], dim=1)  # (batch, d + 1, k)
        y = torch.cat([y, scale[:, :, :1]], dim=1)  # (batch, d + 1, 1)
    # lstsq's default CPU driver needs full rank; gelsd copes with duplicate neighbours.
    driver = "gelsd" if a.device.type == "cpu" else None
    solution: torch.Tensor = torch.linalg.lstsq(a.double(), y.double(), driver=driver).solution
    return solution.squeeze(2).float()


def _piece_weights(n: int, method: str, matrix: str) -> list[float]:
    if method == "sum":
        return [1.0] * n
    if method == "mean":
        return [1.0 / n] * n
    if method == "weighted_mean":
        # Linear weights: the last piece weighs most for the embedding (the model has read the
        # whole token), the first for the output projection (the first piece is predicted).
        ramp = [float(i + 1) for i in range(n)]
        if matrix == "lm_head":
            ramp.reverse()
        total = sum(ramp)
        return [r / total for r in ramp]
    # first_last: the last piece's row for the embedding, the first's for the output.
    w = [0.0] * n
    w[-1 if matrix == "embed" else 0] = 1.0
    return w


def subword_combination(
    pieces: Sequence[Sequence[int]], method: str, matrix: str, fallback: int
) -> Combination:
    """``subword``: each target's MODEL pieces (its text tokenised by MODEL) combined by
    ``method``; a target with no pieces uses MODEL row ``fallback`` (pass the mean row's
    index after appending it)."""
    width = max((len(p) for p in pieces), default=1) or 1
    idx_rows, w_rows = [], []
    for p in pieces:
        pad = width - max(1, len(p))
        idx_rows.append([*p, *[fallback] * pad] if p else [fallback] * width)
        w_rows.append(
            [*_piece_weights(len(p), method, matrix), *[0.0] * pad] if p else [1.0, *[0.0] * pad]
        )
    return Combination(
        torch.tensor(idx_rows, dtype=torch.long).reshape(len(pieces), width),
        torch.tensor(w_rows, dtype=torch.float32).reshape(len(pieces), width),
    )


def statistical_rows(
    method: str, matrix: torch.Tensor, count: int, generator: torch.Generator
) -> torch.Tensor:
    """``mean``, ``zero``, ``randn`` (per-dimension mean and std of ``matrix``) or
    ``john_hewitt`` (a sample of N(mean, covariance) of ``matrix``): (count, hidden) float32
    on CPU; random draws come from ``generator`` (CPU), so they do not depend on the device."""
    m = matrix.detach().float().cpu()
    mean = m.mean(dim=0)
    if method == "zero":
        return torch.zeros(count, m.shape[1])
    if method == "mean":
        return mean.expand(count, -1).clone()
    noise = torch.randn(count, m.shape[1], generator=generator)
    if method == "randn":
        return mean + noise * m.std(dim=0)
    centred = (m - mean).double()
    cov = centred.T @ centred / max(1, m.shape[0] - 1)  # (hidden, hidden)
    return mean + (noise.double() @ _cholesky_with_jitter(cov).T).float()


def _cholesky_with_jitter(cov: torch.Tensor) -> torch.Tensor:
    """Cholesky factor of ``cov``; a matrix that is not positive definite (fewer rows than
    dimensions, duplicate rows) gets a growing multiple of its mean variance on the diagonal
    (MergeKit's fallback for that case crashes)."""
    eye = torch.eye(cov.shape[0], dtype=cov.dtype)
    base = float(cov.diagonal().mean().clamp_min(1e-12))
    jitter = 0.0
    for _ in range(12):
        factor, info = torch.linalg.cholesky_ex(cov + jitter * eye)
        if int(info) == 0:
            return torch.as_tensor(factor)
        jitter = base * 1e-6 if jitter == 0.0 else jitter * 10
    return torch.diag(cov.diagonal().clamp_min(0).sqrt())
