"""Batched Orthogonal Matching Pursuit (arXiv 2506.06607, §3): every target token's sparse
code over a dictionary of shared tokens, many tokens at once.

Each step picks, for every token of the batch, the atom most correlated with its residual,
orthogonalises it against the atoms already chosen (classical Gram-Schmidt applied twice,
which keeps ``Q`` orthonormal to float32 precision without MergeKit's periodic
re-orthogonalisation), and removes its component from the residual. There is no refit per
step: the coefficients are one batched triangular solve at the end, ``R c = Q^T x``. A token
whose residual is already zero (an exact combination of fewer than ``k`` atoms) gets zero
coefficients for the atoms it picks afterwards.

The cost is the selection: correlating every residual with every atom is a (B, d) @ (d, n)
product per step, ``k`` times. With ``candidates = M`` (0 < M < n) each token first keeps the
``M`` atoms most correlated with its target (one product for the batch) and runs OMP over
those only, a (B, M, d) batched product per step: ``n / M`` times fewer multiply-adds,
though a matrix-vector product per token is bound by memory bandwidth, so the gain in time
is smaller (``benchmarks/tokensurgeon.py``: 1.6-2x at M = 1024, n = 28k). This is
an approximation: an atom outside a token's top ``M`` is never picked, so OMP over all atoms
can differ once the residual's best atom was not among the target's best. An exact sparse
combination of atoms that are all among its top ``M`` is still recovered exactly.
"""

from __future__ import annotations

import torch

__all__ = ["batched_omp"]

# A residual this small relative to the target counts as fully explained.
_RESIDUAL_TOL = 1e-6
# An atom whose orthogonal part is this small relative to its norm adds no new direction.
_DEPENDENT_TOL = 1e-6
# Bytes of gathered candidate atoms, (B, M, d), held at once; larger batches are split.
_GATHER_BYTES = 128 << 20


def _omp_batch(unit: torch.Tensor, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """OMP of targets ``x`` (B, d) over unit-norm atoms: ``unit`` is one dictionary (n, d)
    for every token, or one per token (B, M, d). Returns atom positions (B, k) in the
    dictionary and coefficients (B, k) of the unit atoms."""
    b, d = x.shape
    per_token = unit.dim() == 3
    # Orthonormal basis as rows, (B, k, d): the first t rows are one contiguous block.
    q = torch.zeros(b, k, d, dtype=x.dtype, device=x.device)
    r_mat = torch.zeros(b, k, k, dtype=x.dtype, device=x.device)  # upper triangular, (B, k, k)
    z = torch.zeros(b, k, dtype=x.dtype, device=x.device)  # Q^T x, (B, k)
    chosen = torch.zeros(b, k, dtype=torch.long, device=x.device)
    residual = x.clone()
    x_norm = x.norm(dim=1)
    rows = torch.arange(b, device=x.device)
    for t in range(k):
        if per_token:
            corr = torch.bmm(unit, residual.unsqueeze(2)).squeeze(2).abs()  # (B, M)
        else:
            corr = (residual @ unit.T).abs()  # (B, n)
        if t:
            corr[rows.unsqueeze(1), chosen[:, :t]] = -1.0  # never pick an atom twice
        j = corr.argmax(dim=1)
        chosen[:, t] = j
        a = unit[rows, j] if per_token else unit[j]  # (B, d)
        v = a
        proj = torch.zeros(b, t, dtype=x.dtype, device=x.device)
        basis = q[:, :t]  # (B, t, d)
        for _ in range(2 if t else 0):  # Gram-Schmidt, twice
            step = torch.bmm(basis, v.unsqueeze(2))  # (B, t, 1)
            v = v - torch.bmm(step.transpose(1, 2), basis).squeeze(1)
            proj = proj + step.squeeze(2)
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
        q[:, t] = qt
        z[:, t] = (qt * residual).sum(dim=1)
        residual = residual - qt * z[:, t : t + 1]
    coeffs = torch.linalg.solve_triangular(r_mat, z.unsqueeze(2), upper=True).squeeze(2)
    return chosen, coeffs


def _omp_candidates(
    unit: torch.Tensor, x: torch.Tensor, k: int, m: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """OMP of ``x`` (B, d) restricted, per token, to its ``m`` atoms of largest
    ``|cos(atom, target)|``. Returns dictionary indices (B, k) and unit-atom coefficients."""
    cand = (x @ unit.T).abs().topk(m, dim=1).indices  # (B, m), one product for the batch
    chunk = max(1, _GATHER_BYTES // (m * x.shape[1] * x.element_size()))
    idx_parts, c_parts = [], []
    for s in range(0, x.shape[0], chunk):
        sub = cand[s : s + chunk]
        pos, c = _omp_batch(unit[sub], x[s : s + chunk], k)  # unit[sub]: (b, m, d)
        idx_parts.append(sub.gather(1, pos))
        c_parts.append(c)
    return torch.cat(idx_parts), torch.cat(c_parts)


def batched_omp(
    atoms: torch.Tensor,
    targets: torch.Tensor,
    k: int,
    batch_size: int = 512,
    candidates: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse codes of ``targets`` (m, d) over ``atoms`` (n, d): indices (m, k') into the
    atoms and float32 coefficients (m, k'), k' = min(k, n), with
    ``targets[i] ≈ sum_j coeffs[i, j] * atoms[indices[i, j]]``.

    Computed in float32 (float64 when the inputs are) on the atoms' device, ``batch_size``
    targets at a time (-1: all at once). ``candidates`` > 0 restricts each target's search
    to its ``max(candidates, k)`` atoms most correlated with it (see the module docstring);
    0, or a value of at least ``n``, searches every atom.
    """
    dtype = torch.float64 if atoms.dtype == torch.float64 else torch.float32
    atoms = atoms.to(dtype)
    targets = targets.to(device=atoms.device, dtype=dtype)
    n = atoms.shape[0]
    k = min(k, n)
    norms = atoms.norm(dim=1)
    unit = atoms / norms.clamp_min(1e-30).unsqueeze(1)
    m = targets.shape[0]
    step = m if batch_size == -1 else max(1, batch_size)
    prefilter = 0 < candidates < n
    indices, coeffs = [], []
    for start in range(0, m, step):
        x = targets[start : start + step]
        if prefilter:
            idx, c = _omp_candidates(unit, x, k, max(candidates, k))
        else:
            idx, c = _omp_batch(unit, x, k)
        indices.append(idx)
        # Coefficients of the unit atoms -> of the atoms (a zero atom always gets 0).
        coeffs.append(c / norms[idx].clamp_min(1e-30))
    if not indices:
        empty = torch.zeros(0, k, dtype=dtype, device=atoms.device)
        return empty.long(), empty
    return torch.cat(indices), torch.cat(coeffs)
