"""The recipe schema: MergeKit's YAML keys as frozen dataclasses.

Parameter values ("settings") stay in their YAML shape (scalar, gradient list or filter list);
:mod:`meldkit.config.params` evaluates them for one tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from meldkit.config.modelref import ModelRef

__all__ = [
    "Scalar",
    "Setting",
    "FilterEntry",
    "Parameters",
    "InputSource",
    "InputModel",
    "OutputSlice",
    "ModuleConfig",
    "TokenSource",
    "TokenEmbedding",
    "TokenizerConfig",
    "MergeConfig",
]

Scalar = bool | int | float | str


@dataclass(frozen=True)
class FilterEntry:
    """``{filter: substring, value: setting}``; ``filter`` None or ``"*"`` matches everything."""

    filter: str | None
    value: Setting


# A scalar, a gradient (tuple of scalars) or a conditional list (tuple of FilterEntry).
Setting = Scalar | tuple[Scalar, ...] | tuple[FilterEntry, ...] | None
Parameters = dict[str, Setting]


@dataclass(frozen=True)
class InputModel:
    """An entry of ``models:``."""

    model: ModelRef
    parameters: Parameters = field(default_factory=dict)


@dataclass(frozen=True)
class InputSource:
    """An entry of a slice's ``sources``; ``layer_range`` is half-open ``[start, end)``."""

    model: ModelRef
    layer_range: tuple[int, int]
    parameters: Parameters = field(default_factory=dict)


@dataclass(frozen=True)
class OutputSlice:
    """A run of output layers built from equally long input ranges."""

    sources: tuple[InputSource, ...]
    base_model: ModelRef | None = None
    parameters: Parameters = field(default_factory=dict)
    residual_weight: float | None = None  # parsed for compatibility; MergeKit never uses it


@dataclass(frozen=True)
class ModuleConfig:
    """One entry of ``modules:`` (multi-module architectures); exactly one of models/slices."""

    models: tuple[InputModel, ...] | None = None
    slices: tuple[OutputSlice, ...] | None = None
    parameters: Parameters = field(default_factory=dict)


@dataclass(frozen=True)
class TokenSource:
    """Where a token's embedding row comes from: a model's row for the same token,
    ``model_token`` (a given token or id of a model), or ``zero``."""

    kind: Literal["model", "model_token", "zero"]
    model: ModelRef | None = None
    token: str | None = None
    token_id: int | None = None


@dataclass(frozen=True)
class TokenEmbedding:
    source: TokenSource | None = None
    force: bool = False


@dataclass(frozen=True)
class TokenizerConfig:
    """The ``tokenizer:`` block (``tokenizer_source`` is normalised into it too)."""

    source: Literal["union", "base"] | ModelRef = "union"
    tokens: dict[str, TokenEmbedding] = field(default_factory=dict)
    pad_to_multiple_of: int | None = None


@dataclass(frozen=True)
class MergeConfig:
    """A parsed recipe. Exactly one of ``models``, ``slices``, ``modules`` is set."""

    merge_method: str
    models: tuple[InputModel, ...] | None = None
    slices: tuple[OutputSlice, ...] | None = None
    modules: dict[str, ModuleConfig] | None = None
    base_model: ModelRef | None = None
    parameters: Parameters = field(default_factory=dict)
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer: TokenizerConfig | None = None
    tokenizer_from_legacy_key: bool = False
    chat_template: str | None = None
    # The recipe text as given (saved verbatim as mergekit_config.yml), and load-time warnings.
    source_text: str | None = field(default=None, compare=False)
    warnings: tuple[str, ...] = field(default=(), compare=False)
    # Top-level keys that are not recipe keys: the planner tells a user who wrote a method
    # parameter there (`weight: 0.5`) why that parameter is then missing.
    ignored_top_keys: tuple[str, ...] = field(default=(), compare=False)

    def referenced_models(self) -> list[ModelRef]:
        """Every model the recipe names, in first-appearance order (base first when given).

        MergeKit builds this list through a ``set``, so its order (and the donor of config and
        tokenizer without a base model) depends on hash seeds; ours is deterministic.
        """
        refs: list[ModelRef] = []
        if self.base_model is not None:
            refs.append(self.base_model)
        for module in self.all_modules().values():
            for item in module.models or ():
                refs.append(item.model)
            for sl in module.slices or ():
                if sl.base_model is not None:
                    refs.append(sl.base_model)
                refs.extend(src.model for src in sl.sources)
        if isinstance(self.tokenizer and self.tokenizer.source, ModelRef):
            refs.append(self.tokenizer.source)  # type: ignore[union-attr,arg-type]
        return list(dict.fromkeys(refs))

    def all_modules(self) -> dict[str, ModuleConfig]:
        """The recipe as modules: ``models:``/``slices:`` become one unnamed module ``""``."""
        if self.modules is not None:
            return self.modules
        return {"": ModuleConfig(models=self.models, slices=self.slices)}


def setting_repr(value: Any) -> str:
    """Short human form of a setting, for messages."""
    return (
        repr(value)
        if not isinstance(value, tuple)
        else "[" + ", ".join(map(setting_repr, value)) + "]"
    )
