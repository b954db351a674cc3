"""lm-eval-harness tasks as a fitness: a weighted sum of task metrics.

The loaded model is wrapped in lm-eval's ``HFLM`` and scored by ``lm_eval.simple_evaluate``;
the value is ``sum(task.weight * results["results"][task.name][task.metric])``, MergeKit's
evolve objective (it minimises the negative). lm-eval comes with ``pip install
'meldkit[evolve]'``.

YAML::

    fitness:
      - lm_eval:
          tasks: [arc_easy, {name: hellaswag, weight: 0.5, metric: "acc_norm,none"}]
          limit: 100            # examples per task (or a fraction < 1)
          num_fewshot: 0
          batch_size: 8         # or auto
          metric: "acc,none"    # the default for tasks that name none
          apply_chat_template: false

Key ``"lm_eval:<task>,<task>..."``; with several tasks, details ``"<key>.<task>"`` hold each
task's metric before weighting.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meldkit.errors import OptionError, RecipeError, did_you_mean
from meldkit.evolve.fitness.base import as_mapping, bool_option, check_keys, int_option, number

__all__ = ["LmEvalFitness", "LmEvalTask", "fitness_from_mergekit_tasks", "lm_eval_available"]

DEFAULT_METRIC = "acc,none"
_INSTALL_HINT = "pip install 'meldkit[evolve]'"


@dataclass(frozen=True)
class LmEvalTask:
    """One lm-eval task, the metric read from its results, and its weight in the sum."""

    name: str
    weight: float = 1.0
    metric: str = DEFAULT_METRIC


@dataclass
class LmEvalFitness:
    """Scores a model on lm-eval tasks; the value is the weighted sum of their metrics."""

    tasks: tuple[LmEvalTask, ...]
    limit: float | None = None
    num_fewshot: int | None = None
    batch_size: int | str = 1
    apply_chat_template: bool = False
    weight: float = 1.0
    name: str = ""
    needs_tokenizer: bool = True

    def __post_init__(self) -> None:
        if not self.name:
            self.name = "lm_eval:" + ",".join(t.name for t in self.tasks)

    def score(self, model: Any, tokenizer: Any) -> dict[str, float]:
        """Run the tasks with ``lm_eval.simple_evaluate`` and weight their metrics."""
        if not lm_eval_available():
            raise OptionError("lm_eval fitness needs the lm-eval package", hint=_INSTALL_HINT)
        import lm_eval
        from lm_eval.models.huggingface import HFLM

        wrapped = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=self.batch_size)
        output = lm_eval.simple_evaluate(
            model=wrapped,
            tasks=[t.name for t in self.tasks],
            num_fewshot=self.num_fewshot,
            limit=self.limit,
            apply_chat_template=self.apply_chat_template,
            # MergeKit's default: few-shot examples as chat turns whenever a chat template is used.
            fewshot_as_multiturn=self.apply_chat_template,
            log_samples=False,
            bootstrap_iters=0,  # no standard errors: only the metric itself is used
        )
        return self.extract(output)

    def extract(self, output: Mapping[str, Any] | None) -> dict[str, float]:
        """The weighted sum (and per-task details) from ``simple_evaluate``'s output."""
        if not output or "results" not in output:
            raise RecipeError(
                f"{self.name}: lm_eval returned no results",
                hint="run lm_eval on one process (no torchrun)",
            )
        result: dict[str, float] = {}
        total = 0.0
        for task in self.tasks:
            metrics = output["results"].get(task.name)
            if metrics is None:
                metrics = (output.get("groups") or {}).get(task.name)
            if metrics is None:
                known = sorted(output["results"])
                raise RecipeError(
                    f"{self.name}: lm_eval gave no results for task {task.name!r}.{did_you_mean(task.name, known)}",
                    hint="its results hold " + ", ".join(known),
                )
            if task.metric not in metrics:
                known = sorted(
                    k for k in metrics if not str(k).endswith("_stderr,none") and k != "alias"
                )
                raise RecipeError(
                    f"{self.name}: task {task.name!r} has no metric {task.metric!r}.{did_you_mean(task.metric, known)}",
                    hint="give metric: one of " + ", ".join(known),
                )
            value = float(metrics[task.metric])
            if len(self.tasks) > 1:
                result[f"{self.name}.{task.name}"] = value
            total += task.weight * value
        result[self.name] = total
        return result


def lm_eval_available() -> bool:
    """Whether lm-eval can be imported (without importing it)."""
    if "lm_eval" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("lm_eval") is not None
    except (ImportError, ValueError):
        return False


def fitness_from_mergekit_tasks(
    tasks: Sequence[Any],
    limit: float | None = None,
    num_fewshot: int | None = None,
    apply_chat_template: bool = True,
) -> list[dict[str, Any]]:
    """MergeKit evolve's ``tasks:`` (and its ``limit``, ``num_fewshot``, ``apply_chat_template``,
    whose default is true there) as meldkit ``fitness:`` entries: one ``lm_eval`` entry.

    A MergeKit task is a bare name or ``{name, weight: 1.0, metric: "acc,none"}``; the entry keeps
    each weight, so its value is MergeKit's objective ``sum(weight * metric)``.
    """
    items: list[Any] = []
    for task in tasks:
        if isinstance(task, Mapping):
            items.append(
                {
                    "name": task.get("name"),
                    "weight": task.get("weight", 1.0),
                    "metric": task.get("metric", DEFAULT_METRIC),
                }
            )
        else:
            items.append(task)
    options: dict[str, Any] = {"tasks": items, "apply_chat_template": apply_chat_template}
    if limit is not None:
        options["limit"] = limit
    if num_fewshot is not None:
        options["num_fewshot"] = num_fewshot
    return [{"lm_eval": options}]


_OPTIONS = ("tasks", "limit", "num_fewshot", "batch_size", "metric", "apply_chat_template")
_TASK_KEYS = ("name", "weight", "metric")


def _parse_task(item: Any, metric: str, where: str) -> LmEvalTask:
    if isinstance(item, str) and item:
        return LmEvalTask(item, 1.0, metric)
    if not isinstance(item, Mapping):
        raise OptionError(
            f"{where}: expected a task name or {{name, weight, metric}}, got {item!r}",
            hint="for example tasks: [arc_easy]",
        )
    check_keys(item, _TASK_KEYS, where)
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise OptionError(
            f"{where}: a task needs a name, got {name!r}",
            hint="for example {name: arc_easy, weight: 1.0}",
        )
    task_metric = item.get("metric", metric)
    if not isinstance(task_metric, str) or not task_metric:
        raise OptionError(
            f"{where}: metric must be a string like {DEFAULT_METRIC!r}, got {task_metric!r}",
            hint=f"metric: {DEFAULT_METRIC!r}",
        )
    return LmEvalTask(
        name,
        number(item.get("weight", 1.0), "weight", where, "for example weight: 1.0"),
        task_metric,
    )


def parse_lm_eval(options: Any, weight: float, where: str, base_dir: Path) -> LmEvalFitness:
    """The term of an ``lm_eval:`` entry; refuses it when lm-eval is not installed."""
    del base_dir  # lm-eval finds its own tasks
    if not lm_eval_available():
        raise OptionError(f"{where} needs the lm-eval package", hint=_INSTALL_HINT)
    opts = as_mapping(options, where, "{lm_eval: {tasks: [arc_easy], limit: 100}}")
    check_keys(opts, _OPTIONS, where)
    metric = opts.get("metric", DEFAULT_METRIC)
    if not isinstance(metric, str) or not metric:
        raise OptionError(
            f"{where}: metric must be a string like {DEFAULT_METRIC!r}, got {metric!r}",
            hint=f"metric: {DEFAULT_METRIC!r}",
        )
    items = opts.get("tasks")
    if not isinstance(items, list) or not items:
        raise OptionError(
            f"{where}: tasks must be a non-empty list of lm-eval task names, got {items!r}",
            hint="for example tasks: [arc_easy]",
        )
    tasks = tuple(_parse_task(item, metric, f"{where} tasks[{i}]") for i, item in enumerate(items))
    names = [t.name for t in tasks]
    if len(set(names)) < len(names):
        raise OptionError(
            f"{where}: tasks names a task twice: {names}",
            hint="name each task once; weight it instead",
        )
    limit = opts.get("limit")
    if limit is not None:
        number(limit, "limit", where, "a number of examples per task, or a fraction below 1")
        if limit <= 0:
            raise OptionError(
                f"{where}: limit must be positive, got {limit}", hint="for example limit: 100"
            )
    num_fewshot = (
        int_option(opts, "num_fewshot", 0, 0, None, where)
        if opts.get("num_fewshot") is not None
        else None
    )
    batch_size = opts.get("batch_size", 1)
    if batch_size != "auto":
        batch_size = int_option(opts, "batch_size", 1, 1, None, where)
    return LmEvalFitness(
        tasks=tasks,
        limit=limit,
        num_fewshot=num_fewshot,
        batch_size=batch_size,
        apply_chat_template=bool_option(opts, "apply_chat_template", False, where),
        weight=weight,
    )
