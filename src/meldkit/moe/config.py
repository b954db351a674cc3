"""The ``mergekit-moe`` recipe: YAML (a file, text or a dict) -> :class:`MoeConfig`.

The keys are MergeKit's, unchanged::

    base_model: path/to/base            # a folder, a hub id, base+lora
    gate_mode: cheap_embed              # hidden (default) | hidden_avg | cheap_embed
                                        # | random | uniform_random
    dtype: bfloat16
    experts_per_token: 2
    architecture: mixtral               # optional: mixtral | qwen | qwen3 | deepseek
    experts:
      - source_model: path/to/coder
        positive_prompts: ["write a python function"]
        negative_prompts: ["tell a story"]
        noise_scale: 0.01               # optional Gaussian noise on the expert's MLP
        residual_scale: 0.5             # optional factor on the expert's down_proj
    shared_experts: []                  # same fields (Qwen2-MoE, DeepSeek)

Parsing raises :class:`~meldkit.errors.RecipeError` for what makes the file unreadable (a key
of the wrong type, a bad model reference). MergeKit's validation of a well-formed recipe
(:func:`config_problems`) returns every problem, so that the plan reports them with the input
problems at once. Unknown keys are warnings, as for merge recipes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from meldkit.config.modelref import ModelRef, parse_model_ref
from meldkit.errors import RecipeError, did_you_mean

__all__ = [
    "GATE_MODES",
    "PROMPTLESS_GATE_MODES",
    "ExpertConfig",
    "MoeConfig",
    "parse_moe_config",
    "load_moe_config",
    "config_problems",
    "duplicate_prompt_warnings",
    "is_moe_recipe",
]

# "hidden_last" is MergeKit's other spelling of "hidden" (the last position's hidden state).
GATE_MODES = ("hidden", "hidden_avg", "hidden_last", "cheap_embed", "random", "uniform_random")
# Gate modes whose router does not come from the prompts.
PROMPTLESS_GATE_MODES = ("random", "uniform_random")
_TOP_KEYS = (
    "base_model",
    "experts",
    "gate_mode",
    "dtype",
    "experts_per_token",
    "shared_experts",
    "architecture",
)
_EXPERT_KEYS = (
    "source_model",
    "positive_prompts",
    "negative_prompts",
    "noise_scale",
    "residual_scale",
)


@dataclass(frozen=True)
class ExpertConfig:
    """One expert (or shared expert): its model, prompts and optional noise and scale."""

    source_model: ModelRef
    positive_prompts: tuple[str, ...] = ()
    negative_prompts: tuple[str, ...] = ()
    noise_scale: float | None = None
    residual_scale: float | None = None


@dataclass(frozen=True)
class MoeConfig:
    """A parsed ``mergekit-moe`` recipe; ``warnings`` are the keys that were ignored."""

    base_model: ModelRef
    experts: tuple[ExpertConfig, ...]
    gate_mode: str = "hidden"
    dtype: str | None = None
    experts_per_token: int = 2
    shared_experts: tuple[ExpertConfig, ...] = ()
    architecture: str | None = None
    source_text: str | None = None
    warnings: tuple[str, ...] = ()


def is_moe_recipe(data: Any) -> bool:
    """Whether a parsed YAML document looks like a ``mergekit-moe`` recipe."""
    return isinstance(data, dict) and "merge_method" not in data and "experts" in data


def _unknown_keys(data: dict[str, Any], allowed: tuple[str, ...], where: str) -> list[str]:
    return [
        f"{where}: unknown key '{k}' is ignored.{did_you_mean(str(k), allowed, n=1)}"
        for k in data
        if k not in allowed
    ]


def _prompts(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise RecipeError(
            f"{where}: must be a list of strings", hint='write it as ["first prompt", "second"]'
        )
    return tuple(value)


def _number(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecipeError(f"{where}: must be a number, got {value!r}", hint="e.g. 0.01")
    return float(value)


def _expert(data: Any, where: str, warnings: list[str]) -> ExpertConfig:
    if isinstance(data, str):  # a bare model reference: an expert without prompts
        data = {"source_model": data}
    if not isinstance(data, dict):
        raise RecipeError(
            f"{where}: must be a mapping with source_model", hint="write `- source_model: path`"
        )
    if "source_model" not in data:
        raise RecipeError(
            f"{where}: missing 'source_model'", hint="name the expert's model folder or hub id"
        )
    warnings += _unknown_keys(data, _EXPERT_KEYS, where)
    return ExpertConfig(
        source_model=parse_model_ref(data["source_model"], f"{where}.source_model"),
        positive_prompts=_prompts(data.get("positive_prompts"), f"{where}.positive_prompts"),
        negative_prompts=_prompts(data.get("negative_prompts"), f"{where}.negative_prompts"),
        noise_scale=_number(data.get("noise_scale"), f"{where}.noise_scale"),
        residual_scale=_number(data.get("residual_scale"), f"{where}.residual_scale"),
    )


def _experts(value: Any, key: str, warnings: list[str]) -> tuple[ExpertConfig, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise RecipeError(f"{key}: must be a list of experts", hint="write `- source_model: path`")
    return tuple(_expert(e, f"{key}[{i}]", warnings) for i, e in enumerate(value))


def _dtype(value: Any) -> str | None:
    if value is None:
        return None
    from meldkit.io.dtypes import parse_dtype_name

    try:
        parse_dtype_name(str(value))
    except RecipeError as exc:
        raise RecipeError(f"dtype: {exc.message}", hint=exc.hint) from None
    return str(value)


def parse_moe_config(data: Any, source_text: str | None = None) -> MoeConfig:
    """A parsed YAML mapping as a :class:`MoeConfig` (MergeKit's defaults filled in)."""
    if not isinstance(data, dict):
        raise RecipeError(
            f"the MoE recipe must be a mapping of keys, got {type(data).__name__}",
            hint="start with `base_model:` and `experts:`",
        )
    for key in ("base_model", "experts"):
        if data.get(key) is None:
            raise RecipeError(
                f"the MoE recipe has no '{key}'",
                hint="a mergekit-moe recipe needs base_model and a list of experts",
            )
    warnings = _unknown_keys(data, _TOP_KEYS, "recipe")
    per_token = data.get("experts_per_token", 2)
    if isinstance(per_token, bool) or not isinstance(per_token, int):
        raise RecipeError(f"experts_per_token: must be an integer, got {per_token!r}")
    gate_mode = data.get("gate_mode", "hidden")
    arch = data.get("architecture")
    return MoeConfig(
        base_model=parse_model_ref(data["base_model"], "base_model"),
        experts=_experts(data["experts"], "experts", warnings),
        gate_mode=str(gate_mode),
        dtype=_dtype(data.get("dtype")),
        experts_per_token=per_token,
        shared_experts=_experts(data.get("shared_experts"), "shared_experts", warnings),
        architecture=None if arch is None else str(arch),
        source_text=source_text,
        warnings=tuple(warnings),
    )


def load_moe_config(source: Any) -> MoeConfig:
    """Load a MoE recipe from a file path, YAML text, a dict or a :class:`MoeConfig`."""
    if isinstance(source, MoeConfig):
        return source
    if isinstance(source, dict):
        return parse_moe_config(source, yaml.safe_dump(source, sort_keys=False))
    text = os.fspath(source)
    origin = "recipe"
    if "\n" not in text and Path(text).suffix in (".yml", ".yaml", ""):
        path = Path(text)
        if not path.is_file():
            raise RecipeError(
                f"recipe file '{text}' does not exist", hint="check the path to the recipe"
            )
        origin, text = str(path), path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecipeError(
            f"{origin}: invalid YAML: {str(exc).splitlines()[0]}",
            hint="check the indentation and the ':' after each key",
        ) from None
    return parse_moe_config(data, text)


def _prompt_set(e: ExpertConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return (e.positive_prompts, e.negative_prompts)


def config_problems(config: MoeConfig, allow_identical_experts: bool = False) -> list[str]:
    """MergeKit's checks of a recipe (``is_bad_config``), every problem found.

    Unlike MergeKit, ``uniform_random`` needs no prompts (it ignores them, as ``random`` does),
    and identical prompt sets are only refused when the router is made from the prompts.
    """
    problems: list[str] = []
    k, n = config.experts_per_token, len(config.experts)
    if config.gate_mode not in GATE_MODES:
        problems.append(
            f"gate_mode '{config.gate_mode}' is not one of {', '.join(GATE_MODES)}."
            + did_you_mean(config.gate_mode, GATE_MODES)
        )
    if k < 1:
        problems.append(f"experts_per_token is {k}; it must be at least 1")
    elif n < k:
        problems.append(f"experts_per_token is {k} but the recipe has only {n} expert(s)")
    if config.gate_mode not in PROMPTLESS_GATE_MODES:
        for i, e in enumerate(config.experts):
            if not e.positive_prompts:
                problems.append(
                    f"experts[{i}] ({e.source_model}) has no positive_prompts; "
                    f"gate_mode '{config.gate_mode}' makes the router from them"
                )
        if n > 1 and all(_prompt_set(e) == _prompt_set(config.experts[0]) for e in config.experts):
            problems.append(
                "every expert has the same prompts, so the router could not tell them apart"
            )
    models = {str(e.source_model) for e in config.experts}
    if n > 1 and len(models) == 1 and not allow_identical_experts:
        problems.append(
            f"every expert is the same model ({next(iter(models))}); the experts would be "
            "identical copies (pass --i-understand-this-is-not-useful-without-training to "
            "build it anyway)"
        )
    return problems


def duplicate_prompt_warnings(config: MoeConfig) -> list[str]:
    """Experts sharing a prompt set (all of them sharing one is a problem, not a warning)."""
    if config.gate_mode in PROMPTLESS_GATE_MODES:
        return []
    seen: dict[tuple[tuple[str, ...], tuple[str, ...]], int] = {}
    found: list[str] = []
    for i, e in enumerate(config.experts):
        key = _prompt_set(e)
        if key in seen and key[0]:
            found.append(
                f"experts[{seen[key]}] and experts[{i}] have the same prompts: the router "
                "sends the same tokens to both"
            )
        seen.setdefault(key, i)
    return found
