"""Batched Orthogonal Matching Pursuit (arXiv 2506.06607, §3): every target token's sparse
code over a dictionary of shared tokens, many tokens at once.

Each step picks, for every token of the batch, the atom most correlated with its residual
(one matrix product for the batch), orthogonalises it against the atoms already chosen
(classical Gram-Schmidt applied twice, which keeps ``Q`` orthonormal to float32 precision
without MergeKit's periodic re-orthogonalisation), and removes its component from the
residual. The coefficients are one batched triangular solve at the end, ``R c = Q^T x``.
A token whose residual is already zero (an exact combination of fewer than ``k`` atoms) gets
zero coefficients for the atoms it picks afterwards.
"""

from __future__ import annotations

import torch

__all__ = ["batched_omp"]

# A residual this small relative to the target counts as fully explained.
_RESIDUAL_TOL = 1e-6
# An atom whose orthogonal part is this small relative to its norm adds no new direction.
_DEPENDENT_TOL = 1e-6


def _omp_batch(
    atoms: torch.Tensor, unit: torch.Tensor, x: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """OMP of targets ``x`` (B, d) over ``atoms`` (n, d); ``unit`` are the atoms scaled to
    unit norm (for selection). Returns atom indices (B, k) and coefficients (B, k)."""
    b, d = x.shape
    q = torch.zeros(b, d, k, dtype=x.dtype, device=x.device)  # orthonormal basis, (B, d, k)
    r_mat = torch.zeros(b, k, k, dtype=x.dtype, device=x.device)  # upper triangular, (B, k, k)
    z = torch.zeros(b, k, dtype=x.dtype, device=x.device)  # Q^T x, (B, k)
    chosen = torch.zeros(b, k, dtype=torch.long, device=x.device)
    residual = x.clone()
    x_norm = x.norm(dim=1)
    rows = torch.arange(b, device=x.device)
    for t in range(k):
        corr = (residual @ unit.T).abs()  # (B, n)
        if t:
            corr[rows.unsqueeze(1), chosen[:, :t]] = -1.0  # never pick an atom twice
        j = corr.argmax(dim=1)
        chosen[:, t] = j
        a = atoms[j]  # (B, d)
        v = a
        proj = torch.zeros(b, t, dtype=x.dtype, device=x.device)
        for _ in range(2):  # Gram-Schmidt, twice
            if t == 0:
                break
            step = torch.einsum("bdt,bd->bt", q[:, :, :t], v)
            v = v - torch.einsum("bdt,bt->bd", q[:, :, :t], step)
            proj = proj + step
        norm = v.norm(dim=1)
        done = residual.norm(dim=1) <= _RESIDUAL_TOL * x_norm
        dependent = norm <= _DEPENDENT_TOL * a.norm(dim=1).clamp_min(1e-30)
        skip = done | dependent
        # A skipped atom gets a zero basis vector and R[t, t] = 1, so its coefficient is 0.
        r_mat[:, :t, t] = torch.where(skip.unsqueeze(1), torch.zeros_like(proj), proj)
        r_mat[:, t, t] = torch.where(skip, torch.ones_like(norm), norm)
        qt = torch.where(
            skip.unsqueeze(1), torch.zeros_like(v), v / norm.clamp_min(1e-30).unsqueeze(1)
        )
        q[:, :, t] = qt
        z[:, t] = (qt * residual).sum(dim=1)
        residual = residual - qt * z[:, t : t + 1]
    coeffs = torch.linalg.solve_triangular(r_mat, z.unsqueeze(2), upper=True).squeeze(2)
    return chosen, coeffs


def batched_omp(
    atoms: torch.Tensor, targets: torch.Tensor, k: int, batch_size: int = 512
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse codes of ``targets`` (m, d) over ``atoms`` (n, d): indices (m, k') into the
    atoms and float32 coefficients (m, k'), k' = min(k, n), with
    ``targets[i] ≈ sum_j coeffs[i, j] * atoms[indices[i, j]]``.

    Computed in float32 (float64 when the inputs are) on the atoms' device, ``batch_size``
    targets at a time (-1: all at once).
    """
    dtype = torch.float64 if atoms.dtype == torch.float64 else torch.float32
    atoms = atoms.to(dtype)
    targets = targets.to(device=atoms.device, dtype=dtype)
    k = min(k, atoms.shape[0])
    unit = atoms / atoms.norm(dim=1, keepdim=True).clamp_min(1e-30)
    m = targets.shape[0]
    step = m if batch_size == -1 else max(1, batch_size)
    indices, coeffs = [], []
    for start in range(0, m, step):
        idx, c = _omp_batch(atoms, unit, targets[start : start + step], k)
        indices.append(idx)
        coeffs.append(c)
    if not indices:
        empty = torch.zeros(0, k, dtype=dtype, device=atoms.device)
        return empty.long(), empty
    return torch.cat(indices), torch.cat(coeffs)
