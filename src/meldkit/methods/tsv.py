"""TSV-M (Task Singular Vectors merge; Gargiulo et al., CVPR 2025, arXiv 2412.00081).

For a 2-D weight (out × in, ``r = min(out, in)``) with task vectors ``τ_t = w_t (x_t − b)``,
``t = 1..T``::

    k          = max(1, ⌊rank_fraction · r⌋)          (rank_fraction defaults to 1/T)
    τ_t        ≈ U_t S_t V_tᵀ                          (top k singular triplets of each task)
    U          = [U_1 … U_T]   (out × Tk),   S = diag(S_1 … S_T),   V = [V_1 … V_T]   (in × Tk)
    U⊥, V⊥     = polar(U), polar(V)                    (polar(M) = P Qᵀ for M = P Σ Qᵀ)
    Δ          = U⊥ S V⊥ᵀ
    out        = b + alpha · Δ

Non-matrix tensors (norms, biases, 1-D and >2-D) get ``b + alpha · mean_t τ_t``, as in the
authors' code. Token embeddings and LM heads are factorised like any matrix by default
(``embeddings: matrix``); ``embeddings: mean`` gives them the non-matrix rule instead.
With ``rank_fraction`` above 1/T the concatenated factors have more columns than rows can
hold orthonormally; the polar factor is then the nearest partial isometry.

```yaml
merge_method: tsv
base_model: ./base
models: [{model: ./math}, {model: ./code}, {model: ./chat}]
parameters: {alpha: 1.0}
```
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from meldkit.methods import spectral
from meldkit.methods.registry import MergeContext

__all__ = ["tsv", "tsv_delta"]


def tsv_delta(
    taus: Sequence[torch.Tensor], rank_fraction: float | None, ctx: MergeContext
) -> torch.Tensor:
    """``Δ = U⊥ S V⊥ᵀ`` of 2-D task vectors (see the module docstring)."""
    n_tasks = len(taus)
    rank = min(taus[0].shape)
    fraction = 1.0 / n_tasks if rank_fraction is None else rank_fraction
    k = min(rank, max(1, math.floor(fraction * rank)))
    us, ss, vhs = [], [], []
    for t, tau in enumerate(taus):
        u, s, vh = spectral.top_svd(tau, k, ctx, salt=f"tsv/{t}")
        us.append(u)
        ss.append(s)
        vhs.append(vh)
    u_cat = torch.cat(us, dim=1)  # (out, T·k)
    s_cat = torch.cat(ss)  # (T·k,)
    vh_cat = torch.cat(vhs, dim=0)  # (T·k, in)
    del us, vhs
    u_orth = spectral.polar(u_cat)
    vh_orth = spectral.polar(vh_cat)  # polar(V)ᵀ = polar(Vᵀ)
    return (u_orth * s_cat) @ vh_orth  # U⊥ diag(S) V⊥ᵀ


def tsv(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: MergeContext,
) -> torch.Tensor:
    """Merge one tensor with TSV-M (see the module docstring)."""
    fraction = shared.get("rank_fraction")
    return spectral.merge_matrices(
        inputs,
        base_index,
        shared,
        per_input,
        ctx,
        lambda taus: tsv_delta(taus, None if fraction is None else float(fraction), ctx),
    )
