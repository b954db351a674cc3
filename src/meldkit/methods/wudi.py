"""WUDI-merging, "Whoever Started the Interference Should End It" (Cheng et al., ICML 2025,
arXiv 2503.08099).

For a 2-D weight (out × in) with task vectors ``τ_t = x_t − b``, the merged task vector
``τ_m`` minimises the interference each task's own input directions (the rows of ``τ_t``) see::

    L(τ_m) = Σ_t w_t ‖(τ_m − τ_t) τ_tᵀ‖²_F,     w_t = 1 / ‖τ_t‖²_F  (0 for a zero τ_t)
    ∇L     = 2 (τ_m A − B),   A = Σ_t w_t τ_tᵀ τ_t  (in × in),   B = Σ_t w_t τ_t τ_tᵀ τ_t
    out    = b + lambda · τ_m

``solver: adam`` (default) runs the paper's optimiser (below); ``solver: closed`` solves
``τ_m A = B`` exactly. Where ``A`` is singular the
minimisers form an affine space; we return the one the paper's gradient descent from
``τ_0 = Σ_t τ_t`` converges to (gradient steps never leave ``τ_0 + range``)::

    τ_m = τ_0 + (B − τ_0 A) A⁺ = τ_0 + Σ_t w_t (τ_t − τ_0) τ_tᵀ τ_t A⁺

with the pseudo-inverse dropping eigenvalues of ``A`` below ``rcond · λ_max``. Two
factorisations give the same ``A⁺``, chosen by shape: ``eigh`` of the ``in × in`` matrix
``A``, or, when ``2·T·out ≤ in``, the thin SVD ``M = U S Vᵀ`` of the stacked
``M = [√w_t τ_t]`` (``T·out × in``, so ``A = MᵀM``), where
``(B − τ_0 A) A⁺ = [Σ_t (τ_t − τ_0) M_tᵀ U_t] S⁻¹ Vᵀ`` needs no ``in × in`` matrix at all
(benchmarks/wudi_forms.py: the stacked form took 0.29x the Gram form's time at
``T·out / in = 0.36`` and 1.65x at 0.73, so the switch sits near 1/2).

``solver: adam`` runs the paper's optimiser: Adam (β = 0.9, 0.999, ε = 1e-8) from
``τ_0 = Σ_t τ_t`` for ``steps`` steps of learning rate ``lr``, with the exact gradient above, so
it is deterministic and needs no autograd. Per-coordinate steps can leave ``τ_0 + range(A)``,
so with a singular ``A`` it may settle on another minimiser. The few small steps stop far from
the minimiser, and that is what works on language models: on TinyTasks (fp32, n = 100) adam
scored 0.447 and the exact minimiser 0.086 (0.218 at lambda 0.5), so adam is the default
although it costs ``steps`` products with the ``in × in`` Gram matrix per tensor (closed: one
``eigh``). The paper runs 300 steps of 1e-5; our default is 30 of 1e-4, the same distance
(``steps · lr``) in a tenth of the products: on TinyTasks fp32 (n = 200) 300, 100, 50 and 30
steps scored 0.458, 0.459, 0.460 and 0.465 (``benchmarks/quality_grid.py``, rows ``wudi_s*``).

Non-matrix tensors get ``b + lambda · mean_t τ_t``. Token embeddings and LM heads follow
``embeddings`` (``matrix`` by default: the stored vocab × hidden orientation, which is an LM
head's true one; ``mean`` gives them the non-matrix rule). The paper's weights are the norms;
there are no per-model weights.

```yaml
merge_method: wudi
base_model: ./base
models: [{model: ./math}, {model: ./code}, {model: ./chat}]
parameters: {lambda: 1.0, solver: adam, steps: 30, lr: 1.0e-4}
```
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from meldkit.methods import spectral
from meldkit.methods.inputs import param_float
from meldkit.methods.registry import MergeContext

__all__ = ["wudi", "wudi_weights", "wudi_closed_form", "wudi_adam", "wudi_gradient"]


def wudi_weights(taus: Sequence[torch.Tensor]) -> list[float]:
    """``w_t = 1 / ‖τ_t‖²_F``, and 0 for a zero task vector (it constrains nothing)."""
    squares = [float(tau.double().square().sum()) for tau in taus]
    return [1.0 / sq if sq > 0 else 0.0 for sq in squares]


def _start(taus: Sequence[torch.Tensor]) -> torch.Tensor:
    start = taus[0].clone()
    for tau in taus[1:]:
        start.add_(tau)
    return start  # τ_0 = Σ_t τ_t


def _gram_system(
    taus: Sequence[torch.Tensor], weights: Sequence[float], start: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B − τ_0 A)`` with ``A = Σ w_t τ_tᵀ τ_t`` (in × in)."""
    n_in = start.shape[1]
    gram = start.new_zeros(n_in, n_in)
    residual = torch.zeros_like(start)
    for tau, w in zip(taus, weights, strict=True):
        g_t = tau.T @ tau  # (in, in)
        gram.add_(g_t, alpha=w)
        residual.add_((tau - start) @ g_t, alpha=w)
    return gram, residual


def wudi_gradient(
    tau_m: torch.Tensor, taus: Sequence[torch.Tensor], weights: Sequence[float]
) -> torch.Tensor:
    """``∇L(τ_m) = 2 Σ_t w_t (τ_m − τ_t) τ_tᵀ τ_t``."""
    grad = torch.zeros_like(tau_m)
    for tau, w in zip(taus, weights, strict=True):
        grad.add_(((tau_m - tau) @ tau.T) @ tau, alpha=2 * w)
    return grad


def wudi_closed_form(
    taus: Sequence[torch.Tensor], rcond: float, form: str | None = None
) -> torch.Tensor:
    """The minimiser nearest ``Σ_t τ_t`` along the null space of ``A`` (module docstring);
    ``form``: ``"gram"`` or ``"stacked"``, else chosen by shape."""
    weights = wudi_weights(taus)
    start = _start(taus)
    out_dim, in_dim = start.shape
    if form is None:
        form = "stacked" if 2 * len(taus) * out_dim <= in_dim else "gram"
    if form == "gram":
        gram, residual = _gram_system(taus, weights, start)
        eigenvalues, vectors = torch.linalg.eigh(gram)
        keep = eigenvalues > rcond * eigenvalues.max().clamp(min=0)
        vectors, eigenvalues = vectors[:, keep], eigenvalues[keep]
        return start.add_(((residual @ vectors) / eigenvalues) @ vectors.T)
    stacked = torch.cat([tau * w**0.5 for tau, w in zip(taus, weights, strict=True)])
    u, s, vh = torch.linalg.svd(stacked, full_matrices=False)  # (T·out, ρ), (ρ,), (ρ, in)
    del stacked
    keep = s > rcond**0.5 * s.max().clamp(min=0) if s.numel() else s > 0
    u, s, vh = u[:, keep], s[keep], vh[keep]
    projected = start.new_zeros(out_dim, s.numel())  # Σ_t (τ_t − τ_0) M_tᵀ U_t, (out, ρ)
    for t, (tau, w) in enumerate(zip(taus, weights, strict=True)):
        u_t = u[t * out_dim : (t + 1) * out_dim]  # task t's rows of U, (out, ρ)
        projected.add_((tau - start) @ (tau.T @ u_t), alpha=w**0.5)
    return start.add_((projected / s) @ vh)


def wudi_adam(
    taus: Sequence[torch.Tensor],
    steps: int,
    lr: float,
    *,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.Tensor:
    """The paper's Adam iterations from ``Σ_t τ_t`` with the exact gradient ``2(τ_m A − B)``
    (``torch.optim.Adam``'s update, ε = 1e-8, written out so that each step is one product
    with the Gram matrix and six in-place passes over ``τ_m``, with no allocation)."""
    weights = wudi_weights(taus)
    tau_m = _start(taus)
    gram, residual = _gram_system(taus, weights, tau_m)
    target = residual.addmm_(tau_m, gram).mul_(2)  # 2B = 2((B − τ_0 A) + τ_0 A)
    gram.mul_(2)  # 2A: the gradient is then one addmm, 2A τ_m − 2B
    first, second = torch.zeros_like(tau_m), torch.zeros_like(tau_m)
    grad = torch.empty_like(tau_m)
    beta1, beta2 = betas
    for step in range(1, steps + 1):
        torch.addmm(target, tau_m, gram, beta=-1, out=grad)  # 2(τ_m A − B), (out, in)
        first.lerp_(grad, 1 - beta1)  # β1 m + (1 − β1) g
        second.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        # The denominator √(v / (1 − β2^t)) + ε goes into grad's storage: it is spent.
        denom = torch.sqrt(second, out=grad).div_((1 - beta2**step) ** 0.5).add_(1e-8)
        tau_m.addcdiv_(first, denom, value=-lr / (1 - beta1**step))
    return tau_m


def wudi(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: MergeContext,
) -> torch.Tensor:
    """Merge one tensor with WUDI (see the module docstring)."""

    def delta(taus: list[torch.Tensor]) -> torch.Tensor:
        if (shared.get("solver") or "adam") == "adam":
            steps = int(shared.get("steps") or 30)
            return wudi_adam(taus, steps, param_float(shared, "lr", 1e-4))
        return wudi_closed_form(taus, param_float(shared, "rcond", 1e-5))

    return spectral.merge_matrices(
        inputs, base_index, shared, per_input, ctx, delta, scale="lambda", weighted=False
    )
