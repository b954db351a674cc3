"""Iso-CTS: isotropic merging in the common and task-specific subspaces (Marczak et al., ICML
2025, arXiv 2502.04959).

For a 2-D weight with task vectors ``τ_t = w_t (x_t − b)``, ``r = min(out, in)``::

    Δ_TA = Σ_t τ_t = U S Vᵀ
    s    = round((r − ⌊common_fraction · r⌋) / T)       directions per task
    k    = max(0, r − T·s)                              common directions (≈ common_fraction·r)
    U_c, S_c, V_c = the top k triplets of Δ_TA
    R_t  = τ_t − U_c U_cᵀ τ_t                           (each task off the common left space)
    U_t, S_t, V_t = the top s triplets of R_t
    U⊥   = polar([U_c U_1 … U_T]),  V⊥ = polar([V_c V_1 … V_T])
    σ̄    = mean of [S_c S_1 … S_T]
    out  = b + alpha · σ̄ U⊥ V⊥ᵀ

The sizes follow the authors' code rather than the paper's ``s = ⌊(r − k)/T⌋``: the common
part gives up its last directions so that ``k + T·s = r`` and no direction is left unused.
With ``s = 0`` (small matrices, or ``common_fraction`` 1) this is Iso-C. Non-matrix tensors get
``b + alpha · mean_t τ_t``; embeddings and LM heads follow ``embeddings`` as in iso_c.

```yaml
merge_method: iso_cts
base_model: ./base
models: [{model: ./math}, {model: ./code}, {model: ./chat}]
parameters: {alpha: 1.0, common_fraction: 0.8}
```
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from meldkit.methods import spectral
from meldkit.methods.inputs import param_float
from meldkit.methods.registry import MergeContext

__all__ = ["iso_cts", "iso_cts_delta", "subspace_sizes"]


def subspace_sizes(rank: int, n_tasks: int, common_fraction: float) -> tuple[int, int]:
    """``(k, s)``: common directions and directions per task, with ``k + T·s = r``."""
    per_task = round((rank - math.floor(common_fraction * rank)) / n_tasks)
    per_task = max(0, min(per_task, rank // n_tasks))
    return rank - n_tasks * per_task, per_task


def iso_cts_delta(
    taus: list[torch.Tensor], common_fraction: float, ctx: MergeContext
) -> torch.Tensor:
    """``σ̄ U⊥ V⊥ᵀ`` of 2-D task vectors (see the module docstring)."""
    k, per_task = subspace_sizes(min(taus[0].shape), len(taus), common_fraction)
    total = taus[0].clone()
    for tau in taus[1:]:
        total.add_(tau)
    u_c, s_c, vh_c = spectral.top_svd(total, k, ctx, salt="iso_cts/common")
    del total
    us, ss, vhs = [u_c], [s_c], [vh_c]
    if per_task:
        for t, tau in enumerate(taus):
            residual = tau - u_c @ (u_c.T @ tau)  # off the common left subspace
            u, s, vh = spectral.top_svd(residual, per_task, ctx, salt=f"iso_cts/{t}")
            us.append(u)
            ss.append(s)
            vhs.append(vh)
    taus.clear()
    u_orth = spectral.polar(torch.cat(us, dim=1))  # (out, r)
    vh_orth = spectral.polar(torch.cat(vhs, dim=0))  # (r, in)
    return (u_orth @ vh_orth).mul_(torch.cat(ss).mean())


def iso_cts(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: MergeContext,
) -> torch.Tensor:
    """Merge one tensor with Iso-CTS (see the module docstring)."""
    fraction = param_float(shared, "common_fraction", 0.8)
    return spectral.merge_matrices(
        inputs, base_index, shared, per_input, ctx, lambda taus: iso_cts_delta(taus, fraction, ctx)
    )
