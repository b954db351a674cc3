"""TinyTasks as a fitness: exact-match accuracy of a tiny char-level LM on four string skills.

TinyTasks (``shared/tinytasks``) asks a 1M-parameter Llama to complete ``<s>tag:payload=`` with
``answer.`` greedily. This module rebuilds its task definitions, its held-out prompt pool and its
evaluator so that a search needs no copy of the benchmark's code:

- ``rev`` reverses 3-8 letters, ``srt`` sorts 3-8 digits, ``sft`` shifts 3-8 letters by +3
  (Caesar), ``dup`` doubles each of 3-6 letters;
- the pool of a task is 500 distinct payloads drawn by ``random.Random("tinytasks-eval-" +
  task)``, in the benchmark's order of draws, so its prompts are the benchmark's own;
- decoding is greedy, without a KV cache, on prompts batched by length (no padding), stopping
  at ``'.'`` within 16 new tokens; an answer that never stops is wrong.

Splits of the pool: ``report`` is ``pool[:200]`` (what the benchmark reports; n = 200 gives its
accuracies exactly) and ``search`` is ``pool[200:200 + n]``, so a search never sees the prompts
that are reported later.

YAML (every option shown with its default, except the two normalizations)::

    fitness:
      - tinytasks:
          n: 64                        # prompts per task: <= 300 (search), <= 200 (report)
          split: search                # or report
          tasks: [rev, srt, sft, dup]
          finetunes: {rev: models/ft_rev, srt: models/ft_srt, sft: models/ft_sft, dup: models/ft_dup}
          # or normalize: {rev: 0.965, srt: 1.0, sft: 0.985, dup: 1.0}
          threads: 1                   # torch CPU threads while evaluating; null keeps the caller's
        weight: 1.0

Value: with ``normalize`` (each task's fine-tune accuracy) or ``finetunes`` (fine-tune folders,
scored once on the same prompts) the mean over tasks of ``acc / ft_acc`` (TinyTasks' "norm");
otherwise the mean accuracy.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

from meldkit.errors import OptionError, RecipeError, did_you_mean
from meldkit.evolve.fitness.base import as_mapping, check_keys, int_option, number
from meldkit.evolve.fitness.tinytasks_decoding import greedy_answers, judge_answers

__all__ = [
    "TASKS",
    "POOL_SIZE",
    "REPORT_SIZE",
    "TinyTasksFitness",
    "eval_pool",
    "evaluate_tinytasks",
    "greedy_answers",
    "judge_answers",
    "prompts",
    "task_answer",
]

TASKS: tuple[str, ...] = ("rev", "srt", "sft", "dup")
POOL_SIZE = 500  # distinct held-out payloads per task
REPORT_SIZE = 200  # pool[:200] is reported; pool[200:] is what a search may look at
SEARCH_SIZE = POOL_SIZE - REPORT_SIZE
Split = Literal["search", "report"]

_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_DIGITS = "0123456789"
_SHIFT = 3

# (alphabet, shortest, longest) payload of each task.
_PAYLOADS = {
    "rev": (_LETTERS, 3, 8),
    "srt": (_DIGITS, 3, 8),
    "sft": (_LETTERS, 3, 8),
    "dup": (_LETTERS, 3, 6),
}
_CAESAR = str.maketrans(_LETTERS, _LETTERS[_SHIFT:] + _LETTERS[:_SHIFT])


def _draw_payload(task: str, rng: random.Random) -> str:
    # The length is drawn before the symbols: the benchmark's order, hence its prompts.
    alphabet, shortest, longest = _PAYLOADS[task]
    length = rng.randint(shortest, longest)
    return "".join([rng.choice(alphabet) for _ in range(length)])


def task_answer(task: str, payload: str) -> str:
    """The correct answer to ``task`` on ``payload``, without the final ``'.'``."""
    if task == "rev":
        return payload[::-1]
    if task == "srt":
        return "".join(sorted(payload))
    if task == "sft":
        return payload.translate(_CAESAR)
    if task == "dup":
        return "".join(2 * c for c in payload)
    raise ValueError(f"unknown TinyTasks task {task!r}")


@cache
def eval_pool(task: str) -> tuple[str, ...]:
    """The task's 500 held-out payloads: distinct, in the order the seeded generator yields them."""
    rng = random.Random("tinytasks-eval-" + task)
    seen: set[str] = set()
    pool: list[str] = []
    while len(pool) < POOL_SIZE:
        payload = _draw_payload(task, rng)
        if payload not in seen:
            seen.add(payload)
            pool.append(payload)
    return tuple(pool)


def prompts(task: str, n: int, split: Split) -> tuple[str, ...]:
    """The ``n`` payloads of ``task`` that ``split`` evaluates (``report``: pool[:n]; ``search``:
    pool[200:200 + n])."""
    if split not in ("search", "report"):
        raise OptionError(
            f"tinytasks: split must be 'search' or 'report', got {split!r}",
            hint="use split='report'",
        )
    _check_task(task, "tinytasks")
    limit = REPORT_SIZE if split == "report" else SEARCH_SIZE
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= limit:
        raise OptionError(
            f"tinytasks: n must be between 1 and {limit} for split {split!r}, got {n!r}",
            hint="the report split is the pool's first 200 prompts, the search split the other 300",
        )
    start = 0 if split == "report" else REPORT_SIZE
    return eval_pool(task)[start : start + n]


@contextmanager
def _cpu_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` CPU threads for torch (None: leave the setting alone)."""
    import torch

    before = torch.get_num_threads()
    if threads is None or threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def evaluate_tinytasks(
    model: Any,
    n: int = 200,
    split: Split = "report",
    tasks: Sequence[str] = TASKS,
    threads: int | None = 1,
) -> dict[str, float]:
    """Exact-match accuracy of ``model`` on each task, and their ``"mean"``.

    ``split="report"`` with ``n=200`` gives the accuracies of TinyTasks' ``eval.py``. The model is
    used as given (dtype, device); ``eval.py`` upcasts weights to float32 first.

    ``threads`` is torch's CPU thread count during the evaluation, restored afterwards (None keeps
    the caller's): the model's matrices are 128 wide, too small to gain from splitting across
    threads, and on a busy machine the threads' synchronisation makes it many times slower. Run
    several evaluations side by side to use more cores.
    """
    import torch

    cases = [
        (task, f"{task}:{p}=", task_answer(task, p))
        for task in tasks
        for p in prompts(task, n, split)
    ]
    with torch.no_grad(), _cpu_threads(threads):
        verdicts = judge_answers(model, [(text, answer) for _, text, answer in cases])
    hits = {task: 0 for task in tasks}
    for (task, _, _), ok in zip(cases, verdicts):
        hits[task] += ok
    result = {task: hits[task] / n for task in tasks}
    result["mean"] = sum(result[t] for t in tasks) / len(tasks)
    return result


def _finetune_accuracy(
    path: Path, task: str, n: int, split: Split, device: Any, threads: int | None
) -> float:
    """A fine-tune folder's accuracy on its own task, loaded in float32 like the benchmark does."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path))
    model = model.float().to(device)  # type: ignore[no-untyped-call]
    model.eval()
    return evaluate_tinytasks(model, n, split, [task], threads)[task]


@dataclass
class TinyTasksFitness:
    """The TinyTasks fitness term: mean accuracy, or mean of ``acc / ft_acc`` when normalized.

    ``normalize`` holds each task's fine-tune accuracy; ``finetunes`` holds fine-tune folders
    whose accuracy on the same prompts is measured on the first :meth:`score` and then kept.
    ``threads``: see :func:`evaluate_tinytasks`.
    """

    n: int = 64
    split: Split = "search"
    tasks: tuple[str, ...] = TASKS
    normalize: dict[str, float] | None = None
    finetunes: dict[str, Path] | None = None
    threads: int | None = 1
    weight: float = 1.0
    name: str = "tinytasks"
    needs_tokenizer: bool = False
    _measured: dict[str, float] = field(default_factory=dict, repr=False)

    def reference_accuracies(self, device: Any = "cpu") -> dict[str, float] | None:
        """The accuracies the score is normalized by (measured once for ``finetunes``)."""
        if self.normalize is not None:
            return self.normalize
        if self.finetunes is None:
            return None
        for task in self.tasks:
            if task not in self._measured:
                self._measured[task] = _finetune_accuracy(
                    self.finetunes[task], task, self.n, self.split, device, self.threads
                )
        return self._measured

    def score(self, model: Any, tokenizer: Any) -> dict[str, float]:
        """``{"tinytasks": value, "tinytasks.<task>": accuracy, ...}``; the tokenizer is unused."""
        accuracies = evaluate_tinytasks(model, self.n, self.split, self.tasks, self.threads)
        result = {f"{self.name}.{t}": accuracies[t] for t in self.tasks}
        reference = self.reference_accuracies(next(model.parameters()).device)
        if reference is None:
            result[self.name] = accuracies["mean"]
            return result
        for task in self.tasks:
            if reference[task] <= 0:
                raise RecipeError(
                    f"tinytasks: the fine-tune for {task!r} scores 0 on its own task, so it cannot normalize",
                    hint=f"give normalize: {{{task}: <accuracy>}} or a fine-tune that has learnt the task",
                )
        result[self.name] = sum(accuracies[t] / reference[t] for t in self.tasks) / len(self.tasks)
        return result


_OPTIONS = ("n", "split", "tasks", "normalize", "finetunes", "threads")
_EXAMPLE = "{tinytasks: {n: 64, split: search, tasks: [rev, srt, sft, dup]}}"


def _tasks_option(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise OptionError(
            f"{where}: tasks must be a non-empty list, got {value!r}",
            hint="for example tasks: [rev, srt, sft, dup]",
        )
    for task in value:
        _check_task(task, where)
    if len(set(value)) < len(value):
        raise OptionError(f"{where}: tasks lists a task twice: {value}", hint="name each task once")
    return tuple(value)


def _check_task(task: Any, where: str) -> None:
    if task not in TASKS:
        raise OptionError(
            f"{where}: unknown task {task!r}.{did_you_mean(str(task), TASKS)}",
            hint="TinyTasks' tasks are " + ", ".join(TASKS),
        )


def _per_task(value: Any, key: str, tasks: tuple[str, ...], where: str) -> Mapping[str, Any]:
    options = as_mapping(value, f"{where} {key}", "{rev: ..., srt: ..., sft: ..., dup: ...}")
    for task in options:
        _check_task(task, f"{where} {key}")
    missing = [t for t in tasks if t not in options]
    if missing:
        raise OptionError(
            f"{where}: {key} has nothing for {', '.join(missing)}",
            hint=f"give {key} a value for every task scored",
        )
    return options


def parse_tinytasks(options: Any, weight: float, where: str, base_dir: Path) -> TinyTasksFitness:
    """The term of a ``tinytasks:`` entry (options may be empty or null)."""
    opts = as_mapping({} if options is None else options, where, _EXAMPLE)
    check_keys(opts, _OPTIONS, where)
    split = opts.get("split", "search")
    if split not in ("search", "report"):
        raise OptionError(
            f"{where}: split must be 'search' or 'report', got {split!r}.{did_you_mean(str(split), ['search', 'report'])}",
            hint="search scores pool[200:200+n], report the benchmark's pool[:n]",
        )
    n = int_option(opts, "n", 64, 1, SEARCH_SIZE if split == "search" else REPORT_SIZE, where)
    tasks = _tasks_option(opts["tasks"], where) if "tasks" in opts else TASKS
    if "normalize" in opts and "finetunes" in opts:
        raise OptionError(
            f"{where}: give normalize or finetunes, not both",
            hint="finetunes measures what normalize states",
        )
    normalize = None
    if "normalize" in opts:
        given = _per_task(opts["normalize"], "normalize", tasks, where)
        normalize = {}
        for task in tasks:
            acc = number(
                given[task], f"normalize.{task}", where, "a fine-tune accuracy such as 0.995"
            )
            if not 0 < acc <= 1:
                raise OptionError(
                    f"{where}: normalize.{task} must be in (0, 1], got {acc}",
                    hint="a fine-tune accuracy such as 0.995",
                )
            normalize[task] = acc
    finetunes = None
    if "finetunes" in opts:
        given = _per_task(opts["finetunes"], "finetunes", tasks, where)
        finetunes = {}
        for task in tasks:
            path = (base_dir / str(given[task])).resolve()
            if not path.is_dir():
                raise OptionError(
                    f"{where}: finetunes.{task}: folder not found: {path}",
                    hint=f"relative paths start at {base_dir}",
                )
            finetunes[task] = path
    threads = (
        None if opts.get("threads", 1) is None else int_option(opts, "threads", 1, 1, None, where)
    )
    return TinyTasksFitness(
        n=n,
        split=split,
        tasks=tasks,
        normalize=normalize,
        finetunes=finetunes,
        threads=threads,
        weight=weight,
    )
