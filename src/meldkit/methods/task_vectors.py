"""The task-vector pipeline shared by task_arithmetic, ties, dare_*, breadcrumbs*, della*.

For base ``b``, models ``x_i`` with weights ``w_i``, and ``δ_i = x_i - b``::

    δ_i  <- sparsify(δ_i, density_i [, gamma_i | epsilon_i])   # L1-rescaled if `rescale`
    v_i  =  w_i * δ_i
    with sign consensus ("sum"):
        s       = sign(Σ_i v_i)            (an exact 0 counts as +)
        m_i     = [sign(v_i) == s]         (v_i == 0 never agrees)
        mixed   = Σ_i m_i v_i
        divisor = Σ_i m_i w_i              (0 becomes 1), per element
    without:
        mixed   = Σ_i v_i
        divisor = Σ_i w_i                  (|divisor| < 1e-8 becomes 1), a scalar
    if normalize: mixed /= divisor
    mixed *= lambda                        (normalize first, then lambda)
    out = b + mixed

Which sparsifier and whether to elect signs is set per method in
:data:`meldkit.methods.catalog.TASK_VECTOR_FAMILY`; each family member's module is a thin entry
calling :func:`merge_task_vectors`. With only the base as input, the base is returned.

Unlike MergeKit, which stacks all deltas and masks into ``(N, ...)`` tensors and computes in
the input dtype (bf16 stays bf16), the math runs in float32 (float64 for float64 inputs) on
running sums: the same additions in the same order, with about half the scratch memory.

```yaml
merge_method: ties
base_model: ./base
models:
  - {model: ./math, parameters: {weight: 0.6, density: 0.5}}
  - {model: ./code, parameters: {weight: 0.4, density: 0.5}}
parameters: {normalize: true, lambda: 1.0}
```
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from meldkit.methods import sparsify
from meldkit.methods.catalog import TASK_VECTOR_FAMILY, TaskVectorVariant
from meldkit.methods.inputs import Operand, non_base, param_float
from meldkit.methods.registry import MergeContext

__all__ = ["merge_task_vectors", "sparsify_delta", "agreement"]


def sparsify_delta(
    delta: torch.Tensor,
    variant: TaskVectorVariant,
    operand: Operand,
    rescale: bool,
    ctx: MergeContext,
) -> torch.Tensor:
    """Apply the variant's sparsifier to one task vector (``delta`` may be modified)."""
    params = operand.params
    density = param_float(params, "density", 1.0)
    method = variant.sparsifier
    if method is None:
        return delta
    if method == "magnitude":
        return sparsify.magnitude(delta, density, rescale)
    if method == "magnitude_outliers":
        gamma = param_float(params, "gamma", 0.01)
        return sparsify.magnitude_outliers(delta, density, gamma, rescale)
    # Random sparsifiers: one stream per input, keyed by its position in the recipe.
    generator = ctx.generator(str(operand.index))
    if method == "random":
        return sparsify.bernoulli(delta, density, rescale, generator)
    epsilon = param_float(params, "epsilon", 0.15)
    return sparsify.della_magprune(delta, density, epsilon, rescale, generator)


def agreement(values: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """``sign(values) == s`` where ``s`` is +1 where ``positive`` else -1; zeros never agree."""
    return torch.where(positive, values > 0, values < 0)


def merge_task_vectors(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: MergeContext,
    *,
    method: str,
) -> torch.Tensor:
    """Merge one tensor with the task-vector family member ``method`` (e.g. ``"ties"``)."""
    variant = TASK_VECTOR_FAMILY[method]
    assert base_index is not None, f"{method} needs a base model"
    base = inputs[base_index]
    others = non_base(inputs, base_index, per_input)
    if not others:
        return base
    normalize = bool(shared.get("normalize", variant.normalize))
    rescale = bool(shared.get("rescale", variant.rescale))
    lam = param_float(shared, "lambda", 1.0)

    weighted: list[torch.Tensor] = []  # v_i = w_i * sparsify(δ_i), one per model
    weights = [param_float(o.params, "weight", 1.0) for o in others]
    for operand, w in zip(others, weights, strict=True):
        delta = sparsify_delta(operand.tensor - base, variant, operand, rescale, ctx)
        # The sparsifiers return a fresh tensor except for density >= 1, where they hand back
        # `operand.tensor - base`, itself fresh: scaling in place never touches an input.
        weighted.append(delta.mul_(w))

    # MergeKit keeps the weights as a tensor of the math dtype; so do we, so the divisor is
    # rounded exactly as there.
    w_tensor = torch.tensor(weights, dtype=base.dtype, device=base.device)
    if variant.consensus:
        total = weighted[0].clone()
        for v in weighted[1:]:
            total.add_(v)
        positive = total >= 0  # an exact 0 elects +
        del total
        mixed = torch.zeros_like(base)
        divisor = torch.zeros_like(base)
        for i in range(len(weighted)):
            v = weighted[i]
            agree = agreement(v, positive)
            mixed.add_(v * agree)
            divisor.add_(agree * w_tensor[i])
            weighted[i] = v.new_empty(0)  # free this model's delta early
        divisor.masked_fill_(divisor == 0, 1.0)
    else:
        mixed = weighted[0]  # ours (see above), so accumulate into it
        for v in weighted[1:]:
            mixed.add_(v)
        weighted.clear()
        divisor = w_tensor.sum()
        if float(divisor.abs()) < 1e-8:
            divisor = torch.ones_like(divisor)
    if normalize:
        mixed.div_(divisor)
    if lam != 1:
        mixed.mul_(lam)
    return base + mixed
