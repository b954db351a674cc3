"""Merging in-memory state dicts: the recipe machinery without files.

:class:`StateDictMerge` takes the inputs once (``{name: tensor}`` per model), checks them
against the method (tensor names, shapes, dtypes, the number of inputs, the base) and then
merges them for as many parameter sets as the caller likes: each :meth:`~StateDictMerge.merge`
re-resolves the parameters for every tensor name (scalars, gradients over the layer index in
the name, ``{filter, value}`` lists, as in recipes) and runs the method's math per tensor
(:func:`meldkit.execute.tensors.compute_tensor`: float32 math, float64 for float64 inputs,
one cast at the end, the method's seeding per tensor name). Nothing touches the disk and the
inputs are read where they are, never copied up front.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from meldkit.config.load import load_config
from meldkit.config.modelref import parse_model_ref
from meldkit.errors import OptionError, PlanError
from meldkit.execute.device import resolve_device
from meldkit.methods.registry import MergeContext, get_method, load_merge_function
from meldkit.plan.models import InputModelInfo
from meldkit.plan.types import MergePlan, PlanOptions
from meldkit.raw.planning import MISSING_CHOICES, plan_raw
from meldkit.raw.sources import memory_input

__all__ = ["StateDictMerge"]

StateDict = Mapping[str, torch.Tensor]
ParameterMap = Mapping[str, Any]


def _keyed(dicts: Sequence[StateDict] | Mapping[str, StateDict]) -> dict[str, StateDict]:
    """The inputs by name: a mapping's own keys, else ``model_0``, ``model_1``..."""
    if isinstance(dicts, Mapping):
        if dicts and all(isinstance(v, torch.Tensor) for v in dicts.values()):
            raise OptionError(
                "merge_state_dicts takes several state dicts; got a single one",
                hint="pass a list of state dicts, or a dict of names to state dicts",
            )
        keyed = {str(k): v for k, v in dicts.items()}
    else:
        keyed = {f"model_{i}": d for i, d in enumerate(dicts)}
    for key, state in keyed.items():
        if not isinstance(state, Mapping):
            raise OptionError(
                f"input {key} is a {type(state).__name__}, not a state dict of tensors",
                hint="pass model.state_dict() (or any dict of names to tensors) per model",
            )
        if any(c in key for c in "+@") or not key.strip():
            raise OptionError(f"model name {key!r} cannot be used: names may not contain + or @")
    return keyed


def _base_key(base: Any, keyed: dict[str, StateDict]) -> str | None:
    """Which input is the base: a name or position in ``dicts``, or a state dict (the same
    object as one of ``dicts``, else one more input named ``base``)."""
    if base is None:
        return None
    if isinstance(base, str):
        if base not in keyed:
            raise OptionError(f"base={base!r} names no input; the inputs are {', '.join(keyed)}")
        return base
    if isinstance(base, int) and not isinstance(base, bool):
        keys = list(keyed)
        if not -len(keys) <= base < len(keys):
            raise OptionError(f"base={base} is out of range for {len(keys)} inputs")
        return keys[base]
    if isinstance(base, Mapping):
        for key, state in keyed.items():
            if state is base:
                return key
        if "base" in keyed:
            raise OptionError("an input is already named 'base'; pass base= as its name")
        keyed["base"] = base
        return "base"
    raise OptionError(f"base must be a state dict, a name or a position, not {type(base).__name__}")


class StateDictMerge:
    """A merge of fixed in-memory inputs with one method, checked once, run many times.

    Made by :func:`meldkit.api.prepare_state_dict_merge`; see there for the arguments.
    """

    def __init__(
        self,
        dicts: Sequence[StateDict] | Mapping[str, StateDict],
        method: str,
        parameters: ParameterMap | None = None,
        *,
        base: Any = None,
        model_parameters: Sequence[ParameterMap | None] | Mapping[str, ParameterMap] | None = None,
        dtype: str | None = None,
        out_dtype: str | None = None,
        missing: str = "error",
        device: str = "cpu",
        seed: int | None = None,
    ) -> None:
        if missing not in MISSING_CHOICES:
            raise OptionError(
                f"missing={missing!r} is not one of {', '.join(repr(c) for c in MISSING_CHOICES)}"
            )
        self.spec = get_method(method)  # an unknown name fails here, with suggestions
        self._states = _keyed(dicts)
        given = len(self._states)
        self._base = _base_key(base, self._states)
        # The name of a base passed apart from ``dicts`` (None when it is one of them).
        self._extra_base = self._base if len(self._states) > given else None
        self._models: dict[str, InputModelInfo] = {}
        for key, state in self._states.items():
            self._models[key] = memory_input(key, parse_model_ref(key), state)
        self._dtypes = {"dtype": dtype, "out_dtype": out_dtype}
        self.missing = missing
        self.device = resolve_device(device)
        self.seed = seed
        self._fn = load_merge_function(self.spec)
        self._parameters, self._model_parameters = parameters, model_parameters
        self.plan = self.plan_for(parameters, model_parameters)

    @property
    def names(self) -> list[str]:
        """The input names, in order (``model_0``... for a list of state dicts)."""
        return list(self._states)

    def plan_for(
        self,
        parameters: ParameterMap | None = None,
        model_parameters: Sequence[ParameterMap | None] | Mapping[str, ParameterMap] | None = None,
    ) -> MergePlan:
        """The checked plan for one parameter set (PlanError listing every problem)."""
        recipe = self._recipe(parameters, model_parameters)
        return plan_raw(load_config(recipe), self._models, PlanOptions(), self.missing)

    def _recipe(
        self,
        parameters: ParameterMap | None,
        model_parameters: Sequence[ParameterMap | None] | Mapping[str, ParameterMap] | None,
    ) -> dict[str, Any]:
        listed = [k for k in self._states if k != self._extra_base]
        per_model = _per_model(model_parameters, listed, self._extra_base)
        # A base given apart from ``dicts`` is not listed (the planner adds the base), as in a
        # recipe that names it only under base_model:, unless it has parameters of its own.
        keys = listed + ([self._extra_base] if self._extra_base in per_model else [])
        models = [
            {"model": k, **({"parameters": dict(per_model[k])} if k in per_model else {})}
            for k in keys
        ]
        recipe: dict[str, Any] = {"merge_method": self.spec.name, "models": models}
        if self._base is not None:
            recipe["base_model"] = self._base
        if parameters:
            recipe["parameters"] = dict(parameters)
        recipe.update({k: v for k, v in self._dtypes.items() if v is not None})
        return recipe

    def merge(
        self,
        parameters: ParameterMap | None = None,
        model_parameters: Sequence[ParameterMap | None] | Mapping[str, ParameterMap] | None = None,
        *,
        out: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Merge and return ``{name: tensor}``.

        ``parameters`` and ``model_parameters`` replace those the merge was prepared with,
        each on its own: one left as None keeps the prepared one (pass ``{}`` to clear it).
        With ``out``, each result is written into the tensor of that name already in ``out``
        (``copy_``: its dtype and device kept, e.g. a loaded model's parameters) or added to
        it, and ``out`` is returned; shapes are checked before anything is computed."""
        from meldkit.execute.tensors import compute_tensor

        plan = self.plan
        if parameters is not None or model_parameters is not None:
            plan = self.plan_for(
                self._parameters if parameters is None else parameters,
                self._model_parameters if model_parameters is None else model_parameters,
            )
        result: dict[str, torch.Tensor] = {} if out is None else out
        _check_out(result, plan)
        native = self.spec.native_inputs
        with torch.no_grad():
            factors = self._norm_factors(plan)
            for tensor in plan.tensors:
                raw = [self._states[s.model][s.name] for s in tensor.sources]
                ctx = MergeContext(tensor.name, self.seed, self.device, tensor.out_dtype)
                scale = None
                if factors is not None and tensor.norm_match:
                    scale = [factors.get(s.model, 1.0) for s in tensor.sources]
                merged = compute_tensor(
                    tensor,
                    raw,
                    self._fn,
                    ctx,
                    self.device,
                    None,
                    native and scale is None,
                    self.device,
                    input_factors=scale,
                )
                # A copied tensor is the input itself, wherever it is: the result is on `device`.
                merged = merged.to(self.device)
                target = result.get(tensor.name)
                if target is None:
                    result[tensor.name] = merged
                else:
                    target.copy_(merged)
        return result

    def _norm_factors(self, plan: MergePlan) -> dict[str, float] | None:
        """``norm_match``'s factor per input, from the whole state dicts (the in-memory form
        of the engine's pre-pass: :mod:`meldkit.execute.norm_prepass`)."""
        if plan.norm_match is None:
            return None
        from meldkit.methods.modifiers import norm_factors
        from meldkit.methods.modifiers.apply import squared_distance

        sums: dict[str, float] = {}
        for tensor in plan.tensors:
            if not tensor.norm_match or tensor.base_index is None:
                continue
            xs = [self._states[s.model][s.name] for s in tensor.sources]
            base = xs[tensor.base_index]
            for i, (src, x) in enumerate(zip(tensor.sources, xs)):
                if i != tensor.base_index:
                    sums[src.model] = sums.get(src.model, 0.0) + squared_distance(x, base)
        return norm_factors({k: math.sqrt(v) for k, v in sums.items()}, plan.norm_match)


def _check_out(out: Mapping[str, torch.Tensor], plan: MergePlan) -> None:
    """Every tensor already in ``out`` that the merge writes must have the merged shape."""
    problems = [
        f"out[{t.name!r}] has shape {list(out[t.name].shape)}; the merged tensor has {list(t.shape)}"
        for t in plan.tensors
        if t.name in out and tuple(out[t.name].shape) != t.shape
    ]
    if problems:
        raise PlanError(problems, hint="pass a dict whose tensors match the inputs' shapes")


def _per_model(
    given: Sequence[ParameterMap | None] | Mapping[str, ParameterMap] | None,
    keys: list[str],
    extra_base: str | None,
) -> dict[str, ParameterMap]:
    """Per-input parameters by input name: a mapping by name (the base included), or a
    sequence aligned with ``dicts``."""
    if given is None:
        return {}
    if isinstance(given, Mapping):
        names = keys + ([extra_base] if extra_base else [])
        unknown = sorted(set(map(str, given)) - set(names))
        if unknown:
            raise OptionError(
                f"model_parameters names no input {unknown[0]!r}; the inputs are {', '.join(names)}"
            )
        return {str(k): v for k, v in given.items() if v}
    if len(given) != len(keys):
        raise OptionError(
            f"model_parameters has {len(given)} entries for {len(keys)} inputs",
            hint="give one mapping (or None) per input, in order, or a dict by input name",
        )
    return {k: v for k, v in zip(keys, given) if v}
