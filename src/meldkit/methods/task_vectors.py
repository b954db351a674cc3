"""The task-vector family: task_arithmetic, ties, dare_ties, dare_linear, breadcrumbs,
breadcrumbs_ties, della and della_linear, one formula with switches.

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

The sparsifiers (:mod:`meldkit.methods.sparsify`), with ``N`` elements per tensor:

* ``magnitude`` (TIES): keep the ``k = max(1, floor(density * N))`` largest ``|δ|``;
* ``random`` (DARE): keep each element with probability ``density``;
* ``magnitude_outliers`` (Breadcrumbs): with ``target = floor(density * N)``, ``n_top =
  floor(gamma * N)`` and ``n_bot = max(0, N - target - n_top)``, keep the ascending ``|δ|``
  ranks ``[n_bot, n_bot + target)``;
* ``della_magprune`` (DELLA): per row, keep with probability ``density - epsilon + 2 epsilon
  r / (n - 1)`` where ``r`` is the ascending ``|δ|`` rank in the row of ``n``;
* with ``rescale``, the kept ``δ`` is scaled by ``||δ||_1 / ||kept||_1``.

Random sparsifiers draw from counter-based streams keyed by (seed, tensor name, input index).

| method | sparsifier | signs | normalize | rescale |
|---|---|---|---|---|
| task_arithmetic | none | no | false | false |
| ties | magnitude | yes | true | false |
| dare_ties | random | yes | false | true |
| dare_linear | random | no | false | true |
| breadcrumbs | magnitude_outliers | no | false | false |
| breadcrumbs_ties | magnitude_outliers | yes | false | false |
| della | della_magprune | yes | true | true |
| della_linear | della_magprune | no | false | true |

(:data:`~meldkit.methods.task_vector_family.TASK_VECTOR_FAMILY` holds this table.) With only
the base as input, the base is returned.

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
from meldkit.methods.inputs import Operand, non_base, param_float
from meldkit.methods.registry import MergeContext, MergeFunction
from meldkit.methods.task_vector_family import TASK_VECTOR_FAMILY, TaskVectorVariant

__all__ = ["merge_task_vectors", "sparsify_delta", "agreement", *TASK_VECTOR_FAMILY]


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
        return sparsify.magnitude(delta, density, rescale, inplace=True)  # delta is ours
    if method == "magnitude_outliers":
        gamma = param_float(params, "gamma", 0.01)
        return sparsify.magnitude_outliers(delta, density, gamma, rescale)
    # Random sparsifiers: one stream per input, keyed by its position in the recipe.
    key = ctx.stream_key(str(operand.index))
    if method == "random":
        return sparsify.bernoulli(delta, density, rescale, key)
    epsilon = param_float(params, "epsilon", 0.15)
    return sparsify.della_magprune(delta, density, epsilon, rescale, key)


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
    # Inputs may arrive in their stored dtype (the family sets native_inputs): `x - base` with a
    # float32 base converts x exactly on the fly, so no upcast copy of every input is made.
    work = torch.float64 if any(x.dtype == torch.float64 for x in inputs) else torch.float32
    base = inputs[base_index].to(work)
    others = non_base(inputs, base_index, per_input)
    if not others:
        return base
    normalize = bool(shared.get("normalize", variant.normalize))
    rescale = bool(shared.get("rescale", variant.rescale))
    lam = param_float(shared, "lambda", 1.0)
    consumable = isinstance(inputs, list)  # the engine hands over its list: release as we go

    weighted: list[torch.Tensor] = []  # v_i = w_i * sparsify(δ_i), one per model
    weights = [param_float(o.params, "weight", 1.0) for o in others]
    for j in range(len(others)):
        operand = others[j]
        delta = sparsify_delta(operand.tensor - base, variant, operand, rescale, ctx)
        # The sparsifiers return a fresh tensor except for density >= 1, where they hand back
        # `operand.tensor - base`, itself fresh: scaling in place never touches an input.
        weighted.append(delta.mul_(weights[j]))
        del delta
        # Nothing reads this input again: drop our references so its memory can go.
        others[j] = Operand(operand.index, base.new_empty(0), operand.params)
        if consumable:
            inputs[operand.index] = base.new_empty(0)  # type: ignore[index]
        del operand

    # MergeKit keeps the weights as a tensor of the math dtype; so do we, so the divisor is
    # rounded exactly as there.
    w_tensor = torch.tensor(weights, dtype=base.dtype, device=base.device)
    if variant.consensus:
        return _elect_and_mix(base, weighted, w_tensor, normalize, lam)
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
    return mixed.add_(base)  # = base + mixed (addition commutes exactly)


# Sign election and mixing are element-wise, so they run in blocks of this many elements:
# the temporaries (sum, masks, mixed, divisor) stay small whatever the tensor size.
_BLOCK = 1 << 22


def _elect_and_mix(
    base: torch.Tensor,
    weighted: list[torch.Tensor],
    w_tensor: torch.Tensor,
    normalize: bool,
    lam: float,
) -> torch.Tensor:
    out = torch.empty_like(base)
    flat_out, flat_base = out.view(-1), base.reshape(-1)
    flats = [v.reshape(-1) for v in weighted]
    n = flat_base.numel()
    for start in range(0, n, _BLOCK):
        end = min(n, start + _BLOCK)
        block = [v[start:end] for v in flats]  # (block,) per model
        total = block[0].clone()
        for v in block[1:]:
            total.add_(v)
        # sign = +1 where the sum is >= 0 (an exact 0 elects +), else -1
        sign = torch.where(total >= 0, 1.0, -1.0).to(total.dtype)
        del total
        mixed = torch.zeros_like(block[0])
        divisor = torch.zeros_like(block[0])
        for i, v in enumerate(block):
            # v*sign > 0 exactly where v agrees with the elected sign (zeros never agree);
            # clamping the rest to 0 and multiplying back by sign gives v or 0, exactly.
            agreeing = (v * sign).clamp_(min=0)
            divisor.add_(agreeing > 0, alpha=float(w_tensor[i]))
            mixed.addcmul_(agreeing, sign)
        divisor.masked_fill_(divisor == 0, 1.0)
        if normalize:
            mixed.div_(divisor)
        if lam != 1:
            mixed.mul_(lam)
        torch.add(flat_base[start:end], mixed, out=flat_out[start:end])
    return out


def _member(method: str) -> MergeFunction:
    """The merge function of the family member ``method`` (named like it)."""

    def merge(
        inputs: Sequence[torch.Tensor],
        base_index: int | None,
        shared: Mapping[str, Any],
        per_input: Sequence[Mapping[str, Any]],
        ctx: MergeContext,
    ) -> torch.Tensor:
        return merge_task_vectors(inputs, base_index, shared, per_input, ctx, method=method)

    merge.__name__ = merge.__qualname__ = method
    merge.__doc__ = f"Merge one tensor with ``{method}`` (see the module docstring)."
    return merge


task_arithmetic = _member("task_arithmetic")
ties = _member("ties")
dare_ties = _member("dare_ties")
dare_linear = _member("dare_linear")
breadcrumbs = _member("breadcrumbs")
breadcrumbs_ties = _member("breadcrumbs_ties")
della = _member("della")
della_linear = _member("della_linear")
