"""Iso-C: isotropic merging in the common subspace (Marczak et al., ICML 2025, arXiv
2502.04959).

For a 2-D weight with task vectors ``τ_t = w_t (x_t − b)``::

    Δ_TA  = Σ_t τ_t = U S Vᵀ                     (thin SVD, r = min(out, in) values)
    σ̄     = mean(S)                               (= ‖Δ_TA‖_* / r)
    out   = b + alpha · σ̄ U Vᵀ                    (every direction gets the same weight)

Non-matrix tensors get ``b + alpha · mean_t τ_t`` (the authors' rule for norms and biases).
Token embeddings and LM heads are factorised like any matrix by default (``embeddings:
matrix``); ``embeddings: mean`` gives them the non-matrix rule. The flat spectrum needs every
singular vector, so this is always an exact SVD.

```yaml
merge_method: iso_c
base_model: ./base
models: [{model: ./math}, {model: ./code}, {model: ./chat}]
parameters: {alpha: 1.0}
```
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from meldkit.methods import spectral
from meldkit.methods.inputs import param_float
from meldkit.methods.registry import MergeContext

__all__ = ["iso_c"]


def iso_c(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: MergeContext,
) -> torch.Tensor:
    """Merge one tensor with Iso-C (see the module docstring)."""
    base, taus = spectral.task_vectors(inputs, base_index, per_input, weighted=True)
    if not taus:
        return base
    alpha = param_float(shared, "alpha", 1.0)
    embeddings = str(shared.get("embeddings") or "matrix")
    if not spectral.treat_as_matrix(base.shape, ctx.name, embeddings):
        return spectral.mean_of(taus).mul_(alpha).add_(base)
    total = taus[0]  # ours (task_vectors made it), so accumulate into it
    for tau in taus[1:]:
        total.add_(tau)
    del taus
    u, s, vh = torch.linalg.svd(total, full_matrices=False)
    del total
    merged: torch.Tensor = (u @ vh).mul_(s.mean() * alpha)
    return merged.add_(base)
