"""Iso-C: isotropic merging in the common subspace (Marczak et al., ICML 2025, arXiv
2502.04959).

For a 2-D weight with task vectors ``τ_t = w_t (x_t − b)``::

    Δ_TA  = Σ_t τ_t = U S Vᵀ                     (thin SVD, r = min(out, in) values)
    σ̄     = mean(S)                               (= ‖Δ_TA‖_* / r)
    out   = b + alpha · σ̄ U Vᵀ                    (every direction gets the same weight)

Non-matrix tensors get ``b + alpha · mean_t τ_t`` (the authors' rule for norms and biases).
Token embeddings and LM heads are factorised like any matrix by default (``embeddings:
matrix``); ``embeddings: mean`` gives them the non-matrix rule. The flat spectrum needs every
singular vector: the polar factor comes from an exact SVD, or from ``eigh`` of the Gram matrix
for a vocabulary-sized matrix (eight times as long as wide or more) whose spectrum allows it (see
:mod:`meldkit.methods.spectral`).

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
from meldkit.methods.registry import MergeContext

__all__ = ["iso_c", "iso_c_delta"]


def iso_c_delta(taus: list[torch.Tensor]) -> torch.Tensor:
    """``σ̄ U Vᵀ`` of ``Σ_t τ_t = U S Vᵀ`` (the list is consumed)."""
    total = taus[0]  # ours (task_vectors made it), so accumulate into it
    for tau in taus[1:]:
        total.add_(tau)
    taus.clear()
    factor, s = spectral.polar_and_spectrum(total)
    return factor.mul_(s.mean())


def iso_c(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: MergeContext,
) -> torch.Tensor:
    """Merge one tensor with Iso-C (see the module docstring)."""
    return spectral.merge_matrices(inputs, base_index, shared, per_input, ctx, iso_c_delta)
