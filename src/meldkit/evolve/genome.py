"""The genome: which recipe parameters a search varies, and how a vector of genes becomes a
normal merge recipe.

Every gene lives in the unit interval [0, 1] (the optimizer searches the unit cube) and maps
linearly onto its parameter's bounds. Genes are laid out as MergeKit lays out its genome: for
each layer group, each model, each filter (the genome's ``filters``, then "everything else") and
each per-model parameter; then the shared (one per tensor) parameters, per group and filter.

Decoding writes the values into the recipe the way a person would:

- one layer group: a scalar;
- several groups: a gradient list over the layers, one value per layer (each layer takes its
  group's value), or with ``smooth: true`` one value per group that the gradient interpolates;
- filters: ``[{filter: self_attn, value: ...}, ..., {value: ...}]``, the last entry for the
  tensors no filter matches.

Tensors outside the layer stack (embeddings, final norm, LM head) are at depth 0 of a gradient,
so they take the first group's value, as in any MergeKit recipe with gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meldkit.errors import RecipeError
from meldkit.evolve.config import Bounds, GenomeConfig

__all__ = ["Gene", "Genome", "MERGEKIT_SEARCHED"]

# The parameters MergeKit's evolve searches for each of its methods (section 9.2 of the spec).
MERGEKIT_SEARCHED: dict[str, tuple[str, ...]] = {
    "linear": ("weight",),
    "task_arithmetic": ("weight",),
    "ties": ("weight", "density"),
    "dare_ties": ("weight", "density"),
    "slerp": ("t",),
}
# MergeKit's evolve writes `normalize: true` for these unless told otherwise.
_NORMALIZED_BY_DEFAULT = ("linear", "ties", "dare_ties")
_UNIT_PARAMETERS = ("density", "t")


@dataclass(frozen=True)
class Gene:
    """One searched number: a parameter of one model (or shared), one layer group, one filter."""

    parameter: str
    group: int
    model: int | None  # position in genome.models; None for a shared parameter
    filter: str | None  # None: the tensors no filter matches
    bounds: Bounds

    def label(self, model_names: list[str]) -> str:
        """A short, readable name: ``weight[g0,ft_rev,mlp]``."""
        parts = [f"g{self.group}"]
        if self.model is not None:
            parts.append(model_names[self.model])
        if self.filter is not None:
            parts.append(self.filter)
        return f"{self.parameter}[{','.join(parts)}]"


def _default_bounds(name: str, spec: Any, allow_negative: bool) -> Bounds | None:
    if name == "weight":
        return Bounds(-1.0 if allow_negative else 0.0, 1.0)
    if name in _UNIT_PARAMETERS:
        return Bounds(0.0, 1.0)
    if spec.minimum is not None and spec.maximum is not None:
        return Bounds(float(spec.minimum), float(spec.maximum))
    return None


class Genome:
    """The genes of one search file's genome, for a model of ``num_layers`` layers."""

    def __init__(self, config: GenomeConfig, num_layers: int) -> None:
        from meldkit.methods.registry import get_method

        try:
            self.method = get_method(config.merge_method)
        except Exception as exc:  # an unknown method: the registry's message with suggestions
            raise RecipeError(f"genome.merge_method: {exc}") from None
        self.config = config
        self.num_layers = num_layers
        granularity = config.layer_granularity
        if granularity and num_layers % granularity:
            raise RecipeError(
                f"genome.layer_granularity: {granularity} does not divide the model's "
                f"{num_layers} layers",
                hint=f"use a divisor of {num_layers}, or 0 for one group",
            )
        self.groups = num_layers // granularity if granularity else 1
        self.granularity = granularity or num_layers
        self.model_names = _short_names(list(config.models))
        self.searched = self._searched_bounds()
        self.genes = self._layout()

    # -- which parameters -----------------------------------------------------------------
    def _searched_bounds(self) -> dict[str, Bounds]:
        cfg, method = self.config, self.method
        if cfg.search is not None:
            names = list(cfg.search)
        elif method.name in MERGEKIT_SEARCHED:
            names = list(MERGEKIT_SEARCHED[method.name])
        elif method.param("weight") is not None:
            names = ["weight"]
        else:
            raise RecipeError(
                f"genome: say which parameters of {method.name} to search",
                hint="add e.g. `search: {lambda: {min: 0.5, max: 1.5}}` to the genome",
            )
        bounds: dict[str, Bounds] = {}
        for name in names:
            spec = method.param(name)
            if spec is None:
                known = ", ".join(p.name for p in method.params) or "none"
                raise RecipeError(
                    f"genome.search: {method.name} has no parameter {name!r}",
                    hint=f"its parameters: {known}",
                )
            if spec.kind not in ("float", "int"):
                raise RecipeError(
                    f"genome.search.{name}: {spec.kind} parameters cannot be searched",
                    hint="fix it under genome.parameters instead",
                )
            given = cfg.search.get(name) if cfg.search else None
            found = given or _default_bounds(name, spec, cfg.allow_negative_weights)
            if found is None:
                raise RecipeError(
                    f"genome.search.{name}: needs bounds",
                    hint=f"e.g. `{name}: {{min: 0.0, max: 2.0}}`",
                )
            bounds[name] = found
        return bounds

    def _per_model(self, name: str) -> bool:
        spec = self.method.param(name)
        return spec is not None and spec.scope != "shared"

    def _gene_models(self, name: str) -> list[int]:
        """The models that carry their own gene for ``name`` (the base's value is unused by a
        method that takes it apart from the others)."""
        spec = self.method.param(name)
        base = self.config.base_model
        skip_base = spec is not None and (
            spec.scope == "per_non_base" or self.method.base == "required"
        )
        return [i for i, m in enumerate(self.config.models) if not (skip_base and m == base)]

    def _layout(self) -> list[Gene]:
        slots: list[str | None] = [*self.config.filters, None]
        genes: list[Gene] = []
        per_model = [p for p in self.searched if self._per_model(p)]
        shared = [p for p in self.searched if not self._per_model(p)]
        carriers = {p: self._gene_models(p) for p in per_model}
        for group in range(self.groups):
            for model in range(len(self.config.models)):
                for flt in slots:
                    for p in per_model:
                        if model in carriers[p]:
                            genes.append(Gene(p, group, model, flt, self.searched[p]))
        for group in range(self.groups):
            for flt in slots:
                for p in shared:
                    genes.append(Gene(p, group, None, flt, self.searched[p]))
        if not genes:
            raise RecipeError("genome: no gene to search (no model carries the parameters)")
        return genes

    @property
    def size(self) -> int:
        return len(self.genes)

    def labels(self) -> list[str]:
        return [g.label(self.model_names) for g in self.genes]

    # -- the starting point ---------------------------------------------------------------
    def initial(self) -> list[float]:
        """The starting genes: each bound's ``init``, else MergeKit's (weight 1/n models,
        every other parameter 1.0, clamped into its bounds)."""
        n = len(self.config.models)
        out = []
        for gene in self.genes:
            b = gene.bounds
            value = b.init
            if value is None:
                value = 1.0 / n if gene.parameter == "weight" else 1.0
            value = min(max(value, b.minimum), b.maximum)
            out.append((value - b.minimum) / (b.maximum - b.minimum))
        return out

    # -- decoding -------------------------------------------------------------------------
    def values(self, genes: list[float]) -> list[float]:
        """Each gene in its parameter's units (genes outside [0, 1] are clamped)."""
        if len(genes) != self.size:
            raise ValueError(f"expected {self.size} genes, got {len(genes)}")
        out = []
        for g, gene in zip(genes, self.genes):
            u = min(max(float(g), 0.0), 1.0)
            b = gene.bounds
            value = b.minimum + u * (b.maximum - b.minimum)
            spec = self.method.param(gene.parameter)
            out.append(float(round(value)) if spec is not None and spec.kind == "int" else value)
        return out

    def _setting(self, per_group: list[float]) -> Any:
        """One parameter's value over the layer groups, as a recipe writes it."""
        if self.groups == 1:
            return per_group[0]
        if self.config.smooth:
            return list(per_group)
        return [per_group[layer // self.granularity] for layer in range(self.num_layers)]

    def _filtered(self, by_filter: dict[str | None, list[float]]) -> Any:
        if not self.config.filters:
            return self._setting(by_filter[None])
        entries: list[dict[str, Any]] = [
            {"filter": f, "value": self._setting(by_filter[f])} for f in self.config.filters
        ]
        entries.append({"value": self._setting(by_filter[None])})
        return entries

    def recipe(self, genes: list[float]) -> dict[str, Any]:
        """The merge recipe (MergeKit's format) that ``genes`` stand for."""
        cfg = self.config
        values = self.values(genes)
        table: dict[tuple[str, int | None], dict[str | None, list[float]]] = {}
        for value, gene in zip(values, self.genes):
            slot = table.setdefault((gene.parameter, gene.model), {})
            slot.setdefault(gene.filter, [0.0] * self.groups)[gene.group] = value
        models: list[dict[str, Any]] = []
        for i, model in enumerate(cfg.models):
            params = {p: self._filtered(t) for (p, m), t in table.items() if m == i}
            models.append({"model": model, **({"parameters": params} if params else {})})
        shared = {p: self._filtered(t) for (p, m), t in table.items() if m is None}
        top: dict[str, Any] = dict(cfg.parameters)
        if cfg.normalize is not None:
            top["normalize"] = cfg.normalize
        elif self.method.name in _NORMALIZED_BY_DEFAULT and "normalize" not in top:
            top["normalize"] = True
        top.update(shared)
        recipe: dict[str, Any] = {"merge_method": self.method.name, "models": models}
        if cfg.base_model is not None:
            recipe["base_model"] = cfg.base_model
        if top:
            recipe["parameters"] = top
        for key in ("dtype", "out_dtype", "tokenizer_source"):
            value = getattr(cfg, key)
            if value is not None:
                recipe[key] = value
        return recipe

    def describe(self, genes: list[float]) -> dict[str, float]:
        """``{gene label: value in its parameter's units}``, for history and tables."""
        return dict(zip(self.labels(), self.values(genes)))


def _short_names(models: list[str]) -> list[str]:
    """The last path component of each model, made unique with its position when needed."""
    names = [m.rstrip("/").split("/")[-1].split("+")[0] or m for m in models]
    if len(set(names)) != len(names):
        names = [f"{i}:{n}" for i, n in enumerate(names)]
    return names
