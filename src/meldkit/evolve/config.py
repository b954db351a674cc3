"""The search file of ``meldkit evolve``: YAML (a file, text or a dict) -> :class:`SearchConfig`.

One file says what to search, how to score it and how long to search::

    genome:
      models: [ft/rev, ft/srt, ft/sft, ft/dup]   # MergeKit's genome keys
      base_model: base
      merge_method: task_arithmetic              # any registered method
      layer_granularity: 2                       # layers per group; 0: one group for all
      filters: [self_attn, mlp]                  # genes apart for tensors with these names
      smooth: false                              # groups as gradients instead of steps
      allow_negative_weights: false
      search:                                    # meldkit: which parameters, in which bounds
        weight: {min: 0.0, max: 1.0}
      parameters: {lambda: 1.0}                  # meldkit: fixed top-level parameters
      dtype: float32
    fitness:                                     # weighted sum of terms (meldkit.evolve.fitness)
      - tinytasks: {n: 64, finetunes: {rev: ft/rev, srt: ft/srt, sft: ft/sft, dup: ft/dup}}
    budget: {evaluations: 200, wall_time: 1h, population: 8}
    optimizer: cma                               # cma (default) | random
    seed: 0

MergeKit's evolve config (``genome`` plus lm-eval ``tasks:``, ``limit``, ``num_fewshot``,
``random_init``, ``apply_chat_template``...) is accepted: its ``tasks`` become lm-eval fitness
terms, its other genome keys mean what they mean there. Relative model paths resolve against
the search file's folder. Every problem is a :class:`~meldkit.errors.RecipeError` naming the key
and the fix; nothing here imports torch.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from meldkit.errors import RecipeError, did_you_mean

__all__ = [
    "Bounds",
    "Budget",
    "EvaluationOptions",
    "GenomeConfig",
    "SearchConfig",
    "load_search_config",
    "parse_duration",
]

OPTIMIZERS = ("cma", "random")
_TOP_KEYS = (
    "genome",
    "fitness",
    "budget",
    "optimizer",
    "sigma0",
    "seed",
    "evaluation",
    # MergeKit's evolve keys
    "tasks",
    "limit",
    "num_fewshot",
    "shuffle",
    "random_init",
    "apply_chat_template",
    "fewshot_as_multiturn",
)
_GENOME_KEYS = (
    "models",
    "merge_method",
    "base_model",
    "tokenizer_source",
    "layer_granularity",
    "normalize",
    "allow_negative_weights",
    "filters",
    "smooth",
    "search",
    "parameters",
    "dtype",
    "out_dtype",
)
_BUDGET_KEYS = ("evaluations", "wall_time", "population")
_EVAL_KEYS = ("in_memory", "device", "cache_inputs", "model_dtype")
_MODEL_DTYPES = ("float32", "bfloat16", "float16")
_HINT = "see `meldkit evolve --help` or docs/evolve.md for the search file's keys"


@dataclass(frozen=True)
class Bounds:
    """A searched parameter's range and optional starting value (both in its own units)."""

    minimum: float
    maximum: float
    init: float | None = None


@dataclass(frozen=True)
class GenomeConfig:
    """What a candidate is made of; see the module docstring for the keys."""

    models: tuple[str, ...]
    merge_method: str
    base_model: str | None = None
    tokenizer_source: str | None = None
    layer_granularity: int = 0
    normalize: bool | None = None
    allow_negative_weights: bool = False
    filters: tuple[str, ...] = ()
    smooth: bool = False
    search: dict[str, Bounds] | None = None  # None: MergeKit's parameters for the method
    parameters: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None
    out_dtype: str | None = None


@dataclass(frozen=True)
class Budget:
    """When the search stops: whichever comes first. ``population`` None: the optimizer's own
    default (CMA-ES: 4 + 3 ln(genes))."""

    evaluations: int = 100
    wall_time: float | None = None  # seconds
    population: int | None = None


@dataclass(frozen=True)
class EvaluationOptions:
    """How candidates are built and scored.

    ``in_memory``: ``auto`` merges into a loaded model when it and the inputs fit in memory,
    else into a temporary folder; ``true``/``false`` force one. ``cache_inputs``: keep the
    inputs' tensors in memory between candidates (``auto``: when they fit). ``model_dtype``:
    the dtype the candidate model is evaluated in (default float32, as TinyTasks' eval.py).
    Each evaluator's torch threads are the backend's ``cpus_per_worker``."""

    in_memory: str = "auto"
    device: str = "cpu"
    cache_inputs: str = "auto"
    model_dtype: str = "float32"


@dataclass(frozen=True)
class SearchConfig:
    """A parsed search file. ``fitness`` stays the raw list of entries
    (:func:`meldkit.evolve.fitness.parse_fitness` checks it); ``base_dir`` is where relative
    paths in it resolve."""

    genome: GenomeConfig
    fitness: list[Any]
    budget: Budget
    optimizer: str = "cma"
    sigma0: float = 1 / 6
    seed: int = 0
    random_init: bool = False
    evaluation: EvaluationOptions = EvaluationOptions()
    base_dir: Path = Path(".")
    source_text: str = ""


def parse_duration(value: Any, where: str) -> float:
    """Seconds from a number or a string such as ``90``, ``"45s"``, ``"30m"``, ``"1h30m"``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip().lower().replace(" ", "")
        parts = re.fullmatch(
            r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?", text
        )
        if parts is None or not any(parts.groups()):
            raise RecipeError(
                f"{where}: {value!r} is not a duration",
                hint='write seconds, or e.g. "30m", "1h30m"',
            )
        h, m, s = (float(g) if g else 0.0 for g in parts.groups())
        seconds = 3600 * h + 60 * m + s
    else:
        raise RecipeError(
            f"{where}: {value!r} is not a duration", hint='write seconds, or e.g. "30m", "1h30m"'
        )
    if not seconds > 0 or math.isinf(seconds):
        raise RecipeError(f"{where}: the duration must be positive, got {value!r}")
    return seconds


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RecipeError(f"{where}: expected a mapping, got {type(value).__name__}", hint=_HINT)
    return value


def _unknown_keys(data: dict[str, Any], valid: tuple[str, ...], where: str) -> None:
    for key in data:
        if key not in valid:
            raise RecipeError(
                f"{where}: unknown key {key!r}.{did_you_mean(str(key), valid)}", hint=_HINT
            )


def _int(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RecipeError(f"{where}: expected a whole number >= {minimum}, got {value!r}")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RecipeError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise RecipeError(f"{where}: expected true or false, got {value!r}")
    return value


def _model_path(value: Any, where: str, base_dir: Path) -> str:
    """A model reference as a string; a relative path that exists beside the search file
    becomes absolute, so the recipes written later run from any folder."""
    if isinstance(value, dict) and "model" in value:
        value = value["model"]
    if not isinstance(value, str) or not value.strip():
        raise RecipeError(f"{where}: expected a model folder or hub id, got {value!r}")
    path, plus, lora = value.partition("+")
    local = Path(path).expanduser()
    if not local.is_absolute() and (base_dir / local).exists():
        path = str((base_dir / local).resolve())
    elif local.exists():
        path = str(local.resolve())
    return path + plus + lora


def _bounds(name: str, value: Any, where: str) -> Bounds:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        lo, hi, init = value[0], value[1], None
    elif isinstance(value, dict):
        _unknown_keys(value, ("min", "max", "init"), where)
        if "min" not in value or "max" not in value:
            raise RecipeError(
                f"{where}: a searched parameter needs min and max",
                hint=f"e.g. `{name}: {{min: 0.0, max: 1.0}}` or `{name}: [0.0, 1.0]`",
            )
        lo, hi, init = value["min"], value["max"], value.get("init")
    else:
        raise RecipeError(
            f"{where}: expected [min, max] or {{min, max, init}}, got {value!r}",
            hint=f"e.g. `{name}: [0.0, 1.0]`",
        )
    lo_f, hi_f = _number(lo, f"{where}.min"), _number(hi, f"{where}.max")
    if not lo_f < hi_f:
        raise RecipeError(f"{where}: min ({lo_f:g}) must be below max ({hi_f:g})")
    init_f = None if init is None else _number(init, f"{where}.init")
    if init_f is not None and not lo_f <= init_f <= hi_f:
        raise RecipeError(f"{where}.init: {init_f:g} is outside [{lo_f:g}, {hi_f:g}]")
    return Bounds(lo_f, hi_f, init_f)


def _genome(data: dict[str, Any], base_dir: Path) -> GenomeConfig:
    where = "genome"
    _unknown_keys(data, _GENOME_KEYS, where)
    models = data.get("models")
    if not isinstance(models, list) or not models:
        raise RecipeError(
            "genome.models: expected a list of models to merge",
            hint="e.g. `models: [path/to/ft_a, path/to/ft_b]`",
        )
    method = data.get("merge_method")
    if not isinstance(method, str) or not method:
        raise RecipeError(
            "genome.merge_method: missing", hint="e.g. `merge_method: task_arithmetic`"
        )
    base = data.get("base_model")
    filters = data.get("filters") or []
    if not isinstance(filters, list) or not all(isinstance(f, str) and f for f in filters):
        raise RecipeError("genome.filters: expected a list of tensor-name substrings")
    search = data.get("search")
    bounds = None
    if search is not None:
        search = _mapping(search, "genome.search")
        if not search:
            raise RecipeError("genome.search: names no parameter to search")
        bounds = {str(k): _bounds(str(k), v, f"genome.search.{k}") for k, v in search.items()}
    fixed = _mapping(data.get("parameters"), "genome.parameters")
    overlap = sorted(set(fixed) & set(bounds or {}))
    if overlap:
        raise RecipeError(
            f"genome: {overlap[0]!r} is both searched and fixed",
            hint="keep it under search: or under parameters:, not both",
        )
    normalize = data.get("normalize")
    return GenomeConfig(
        models=tuple(_model_path(m, f"genome.models[{i}]", base_dir) for i, m in enumerate(models)),
        merge_method=method,
        base_model=None if base is None else _model_path(base, "genome.base_model", base_dir),
        tokenizer_source=data.get("tokenizer_source"),
        layer_granularity=_int(
            data.get("layer_granularity", 0) or 0, f"{where}.layer_granularity", 0
        ),
        normalize=None if normalize is None else _bool(normalize, f"{where}.normalize"),
        allow_negative_weights=_bool(
            data.get("allow_negative_weights", False), f"{where}.allow_negative_weights"
        ),
        filters=tuple(filters),
        smooth=_bool(data.get("smooth", False), f"{where}.smooth"),
        search=bounds,
        parameters=dict(fixed),
        dtype=data.get("dtype"),
        out_dtype=data.get("out_dtype"),
    )


def _budget(data: dict[str, Any]) -> Budget:
    _unknown_keys(data, _BUDGET_KEYS, "budget")
    wall = data.get("wall_time")
    population = data.get("population")
    return Budget(
        evaluations=_int(data.get("evaluations", 100), "budget.evaluations", 1),
        wall_time=None if wall is None else parse_duration(wall, "budget.wall_time"),
        population=None if population is None else _int(population, "budget.population", 2),
    )


def _evaluation(data: dict[str, Any]) -> EvaluationOptions:
    _unknown_keys(data, _EVAL_KEYS, "evaluation")
    choices = ("auto", "true", "false")
    values = {}
    for key in ("in_memory", "cache_inputs"):
        raw = data.get(key, "auto")
        text = str(raw).lower() if isinstance(raw, (bool, str)) else None
        if text not in choices:
            raise RecipeError(f"evaluation.{key}: expected auto, true or false, got {raw!r}")
        values[key] = text
    model_dtype = str(data.get("model_dtype", "float32"))
    if model_dtype not in _MODEL_DTYPES:
        raise RecipeError(
            f"evaluation.model_dtype: {model_dtype!r} is not one of {', '.join(_MODEL_DTYPES)}"
        )
    return EvaluationOptions(
        in_memory=values["in_memory"],
        cache_inputs=values["cache_inputs"],
        device=str(data.get("device", "cpu")),
        model_dtype=model_dtype,
    )


def _mergekit_fitness(data: dict[str, Any]) -> list[Any]:
    """MergeKit's lm-eval ``tasks:`` (with ``limit``, ``num_fewshot``...) as fitness entries."""
    from meldkit.evolve.fitness import fitness_from_mergekit_tasks

    tasks = data["tasks"]
    if isinstance(tasks, (str, dict)):
        tasks = [tasks]
    if not isinstance(tasks, list):
        raise RecipeError("tasks: expected a list of lm-eval task names")
    return list(
        fitness_from_mergekit_tasks(
            tasks,
            limit=data.get("limit"),
            num_fewshot=data.get("num_fewshot"),
            apply_chat_template=bool(data.get("apply_chat_template", True)),
        )
    )


def parse_search_config(data: Any, base_dir: Path, source_text: str = "") -> SearchConfig:
    """Check a loaded search file (a mapping) and return its :class:`SearchConfig`."""
    if not isinstance(data, dict):
        raise RecipeError(
            "the search file must be a mapping with genome:, fitness: and budget:", hint=_HINT
        )
    _unknown_keys(data, _TOP_KEYS, "search file")
    if "genome" not in data:
        raise RecipeError("the search file has no genome:", hint=_HINT)
    genome = _genome(_mapping(data["genome"], "genome"), base_dir)
    fitness: list[Any] = []
    if data.get("fitness") is not None:
        entries = data["fitness"]
        fitness = list(entries) if isinstance(entries, list) else [entries]
    if data.get("tasks") is not None:
        fitness += _mergekit_fitness(data)
    if not fitness:
        raise RecipeError(
            "the search file has no fitness: (nor MergeKit's tasks:)",
            hint="e.g. `fitness: [{perplexity: {file: text.txt}}]`",
        )
    optimizer = data.get("optimizer", "cma")
    if optimizer not in OPTIMIZERS:
        raise RecipeError(
            f"optimizer: {optimizer!r} is not one of {', '.join(OPTIMIZERS)}."
            f"{did_you_mean(str(optimizer), OPTIMIZERS)}"
        )
    sigma0 = _number(data.get("sigma0", 1 / 6), "sigma0")
    if not 0 < sigma0 <= 1:
        raise RecipeError(
            f"sigma0: {sigma0:g} is outside (0, 1]",
            hint="it is the step size in the unit cube every gene is searched in",
        )
    seed = data.get("seed", 0)
    return SearchConfig(
        genome=genome,
        fitness=fitness,
        budget=_budget(_mapping(data.get("budget"), "budget")),
        optimizer=str(optimizer),
        sigma0=sigma0,
        seed=_int(seed, "seed", 0),
        random_init=_bool(data.get("random_init", False), "random_init"),
        evaluation=_evaluation(_mapping(data.get("evaluation"), "evaluation")),
        base_dir=base_dir,
        source_text=source_text,
    )


def load_search_config(source: str | Path | dict[str, Any]) -> SearchConfig:
    """Load a search file from a path, YAML text or a dict (relative paths: the file's folder,
    else the working folder)."""
    if isinstance(source, dict):
        return parse_search_config(source, Path.cwd(), yaml.safe_dump(source, sort_keys=False))
    path = Path(source)
    text = str(source)
    base_dir = Path.cwd()
    if "\n" not in text and path.suffix in (".yaml", ".yml", ".json") or path.is_file():
        if not path.is_file():
            raise RecipeError(f"search file {path} does not exist")
        text = path.read_text(encoding="utf-8")
        base_dir = path.resolve().parent
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecipeError(f"the search file is not valid YAML: {exc}") from None
    return parse_search_config(data, base_dir, text)
