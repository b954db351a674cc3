"""Low-rank factors of one delta matrix: truncated SVD, randomized when the rank is small.

For ``delta`` (out, in) of rank at most ``n = min(out, in)``:

* **full** SVD (``torch.linalg.svd``) when the rank sought is not far below ``n``
  (``rank + oversample >= n / 2``), where a randomized method saves nothing;
* **randomized** subspace iteration otherwise (Halko, Martinsson & Tropp 2011, alg. 4.4):
  a seeded Gaussian sketch of ``rank + oversample`` columns, ``POWER_ITERATIONS`` rounds of
  re-orthonormalised power iteration, then the exact SVD of the small projected matrix.

A fixed rank (MergeKit's mode, where the product ``B A`` should be the truncated SVD itself)
keeps iterating, up to ``MAX_POWER_ITERATIONS``, until the top-r subspace is within
``SUBSPACE_TOLERANCE`` of the exact one (a Davis-Kahan bound from the residual and the spectral
gap, one extra product to evaluate); a spectrum too flat for that (noise-like deltas) falls back
to the full SVD. ``svd="randomized"`` skips the check.

Both give ``U_r diag(S_r) V_r^T = P delta`` for an orthogonal projection ``P``, so the energy kept
``sum(S_r^2)`` and the residual ``||delta||_F^2 - sum(S_r^2)`` are exact for the factors
returned (``||delta||_F^2`` needs no SVD). That makes the energy rule exact without the full
spectrum: the rank is grown (doubling) until the triplets found keep the energy asked for. The
rank found is minimal for the subspace found; the full SVD's optimum can only be smaller when
the randomized subspace misses energy, which power iterations make negligible (the benchmark
reports both). Math in float32 (float64 for float64 inputs); each module's sketch is seeded from
the extraction's seed and the module's name, so the result depends on neither order nor threads
of the run (BLAS reductions aside).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch

__all__ = ["Factors", "low_rank_factors", "OVERSAMPLE", "POWER_ITERATIONS", "MAX_POWER_ITERATIONS"]

OVERSAMPLE = 10
POWER_ITERATIONS = 2  # rounds always run
MAX_POWER_ITERATIONS = 6  # for a fixed rank, until the subspace is accurate, else full SVD
SUBSPACE_TOLERANCE = 1e-4  # sin of the largest angle to the exact top-r subspace
_FIRST_GUESS = 32  # first rank tried by the energy rule before doubling


@dataclass
class Factors:
    """``B @ A`` approximates the delta: ``a`` (r, in), ``b`` (out, r), float32 (or float64).

    ``singular_values`` are the r kept; ``total`` is ``||delta||_F^2``; ``method`` says which SVD
    produced them (``full`` or ``randomized``)."""

    a: torch.Tensor
    b: torch.Tensor
    singular_values: torch.Tensor
    total: float
    method: str

    @property
    def rank(self) -> int:
        return int(self.singular_values.numel())

    @property
    def energy(self) -> float:
        """Fraction of ``||delta||_F^2`` kept (1 for a zero delta)."""
        if self.total == 0.0:
            return 1.0
        kept = float(self.singular_values.double().square().sum())
        return min(kept / self.total, 1.0)


def _seed(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (1 << 63)


def _full(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    return u, s, vh


def _randomized(
    delta: torch.Tensor, q: int, seed: int, check_rank: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Top-``q`` SVD triplets of ``delta`` by subspace iteration from a seeded sketch.

    With ``check_rank`` r, iterate (up to ``MAX_POWER_ITERATIONS``) until the top r singular
    subspaces are accurate to ``SUBSPACE_TOLERANCE`` (Davis-Kahan: ``sin(angle) <=
    ||delta V_r - U_r S_r|| / (s_r - s_{r+1})``); None when they do not get there (a flat
    spectrum: the caller falls back to the full SVD).
    """
    gen = torch.Generator(device=delta.device).manual_seed(seed)
    sketch = torch.randn(delta.shape[1], q, generator=gen, device=delta.device, dtype=delta.dtype)
    basis = torch.linalg.qr(delta @ sketch).Q  # (out, q)
    rounds = MAX_POWER_ITERATIONS if check_rank else POWER_ITERATIONS
    for done in range(1, rounds + 1):
        # Orthonormalise after each product so that small singular directions survive.
        row_basis = torch.linalg.qr(delta.T @ basis).Q  # (in, q)
        basis = torch.linalg.qr(delta @ row_basis).Q  # (out, q)
        if done < POWER_ITERATIONS:
            continue
        u_small, s, vh = torch.linalg.svd(basis.T @ delta, full_matrices=False)  # (q, in)
        u = basis @ u_small  # (out, q)
        if check_rank is None or _converged(delta, u, s, vh, check_rank):
            return u, s, vh
    return None


def _converged(
    delta: torch.Tensor, u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, r: int
) -> bool:
    # U^T delta = S V^T holds by construction; the other side measures the subspace error.
    residual = delta @ vh[:r].T - u[:, :r] * s[:r]  # (out, r)
    gap = float(s[r - 1] - s[r])
    top = float(s[0])
    if top == 0.0:
        return True
    return gap > 0 and float(torch.linalg.matrix_norm(residual)) <= SUBSPACE_TOLERANCE * gap


def _rank_for(s: torch.Tensor, total: float, energy: float) -> int | None:
    """The smallest rank whose triplets keep ``energy`` of ``total`` (None: not within ``s``)."""
    if total == 0.0:
        return 0
    kept = torch.cumsum(s.double().square(), 0)
    # Residual form: avoids comparing two nearly equal numbers when energy is close to 1.
    ok = (total - kept) <= (1.0 - energy) * total
    hits = torch.nonzero(ok)
    return int(hits[0]) + 1 if hits.numel() else None


def _svd(
    delta: torch.Tensor, want: int, n: int, seed: int, mode: str, exact_rank: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
    if mode != "full" and 2 * (want + OVERSAMPLE) < n:
        check = want if exact_rank and mode == "auto" else None
        found = _randomized(delta, want + OVERSAMPLE, seed, check)
        if found is not None:
            return (*found, "randomized")
    u, s, vh = _full(delta)
    return u, s, vh, "full"


def low_rank_factors(
    delta: torch.Tensor,
    *,
    name: str,
    max_rank: int | None,
    energy: float | None,
    sv_epsilon: float = 0.0,
    distribute_scale: bool = True,
    seed: int = 0,
    svd: str = "auto",
) -> Factors:
    """Factor ``delta`` (out, in) as ``B @ A`` by the rank rule given (see
    :class:`~meldkit.extract_lora.options.ExtractionOptions`); ``name`` seeds the sketch.

    ``svd``: ``auto`` (randomized when the rank is far below the size; for a fixed rank only
    once its subspace is accurate, else full), ``full`` or ``randomized`` (unchecked)."""
    n = min(delta.shape)
    cap = n if max_rank is None else min(max_rank, n)
    total = float(delta.double().square().sum()) if delta.numel() else 0.0
    module_seed = _seed(seed, name)
    if energy is None:
        u, s, vh, method = _svd(delta, cap, n, module_seed, svd, exact_rank=True)
        rank = cap if total > 0 else 0
    else:
        want = min(cap, _FIRST_GUESS)
        while True:
            u, s, vh, method = _svd(delta, want, n, module_seed, svd, exact_rank=False)
            trusted = s if method == "full" else s[:want]  # the tail of a sketch is rough
            found = _rank_for(trusted, total, energy)
            if found is not None or want >= cap or method == "full":
                rank = min(found if found is not None else cap, cap)
                break
            want = min(2 * want, cap)
    if sv_epsilon > 0:
        rank = min(rank, int((s[:rank] > sv_epsilon).sum()))
    u, s, vh = u[:, :rank], s[:rank], vh[:rank]
    if distribute_scale:
        root = s.sqrt()
        a, b = root[:, None] * vh, u * root[None, :]  # (r, in), (out, r)
    else:
        a, b = s[:, None] * vh, u
    return Factors(a.contiguous(), b.contiguous(), s, total, method)
