"""The search loop: ask the optimizer, score the generation, record it, tell, repeat.

Before anything is scored the genome's starting recipe is planned against the inputs' headers
(every problem reported at once) and the fitness entries are checked. Each generation's
candidates go to a backend (:mod:`meldkit.evolve.backends`: this process, or Ray workers);
each result is appended to ``history.jsonl`` and after every generation ``state.json``,
``best_recipe.yaml``, ``results.md`` and ``fitness.png`` are rewritten.

Resuming replays the recorded generations through a fresh optimizer with the same seed (the
same candidates come back, and are checked against the record) and scores only what is
missing, so a killed search finishes with exactly the history of an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from meldkit.errors import OptionError
from meldkit.evolve.candidate import Candidate
from meldkit.evolve.config import SearchConfig
from meldkit.evolve.genome import Genome
from meldkit.evolve.optimizers import make_optimizer
from meldkit.evolve.report import best_record, write_best_recipe, write_plot, write_table
from meldkit.evolve.storage import Storage, config_hash

__all__ = ["SearchResult", "backend_options", "plan_search", "run_evolve", "run_search"]

Info = Callable[[str], None]


@dataclass
class SearchResult:
    """What a finished (or stopped) search found."""

    storage: Path
    best: dict[str, Any] | None
    history: list[dict[str, Any]]
    stop_reason: str
    best_model: Path | None = None


def _num_layers(config: SearchConfig) -> int:
    """The layer count, from a plan of the one-group genome (headers only: this also checks
    the models, the method and the fixed parameters before anything is computed)."""
    from meldkit.api import plan_merge

    probe = Genome(replace(config.genome, layer_granularity=0), 1)
    plan = plan_merge(probe.recipe(probe.initial()), on_warning=lambda message: None)
    return int(plan.output_layers) or 1


def plan_search(config: SearchConfig) -> Genome:
    """The genome of ``config``, after planning its starting recipe (headers only) and
    checking its fitness entries; raises the first problem found."""
    from meldkit.api import plan_merge
    from meldkit.evolve.fitness import parse_fitness

    parse_fitness(config.fitness, base_dir=config.base_dir)
    genome = Genome(config.genome, _num_layers(config))
    plan_merge(genome.recipe(genome.initial()), on_warning=lambda message: None)
    return genome


def _start(config: SearchConfig, genome: Genome) -> list[float]:
    if not config.random_init:
        return genome.initial()
    import numpy as np

    # A stream of its own, so the optimizer's draws do not depend on random_init.
    return [float(v) for v in np.random.default_rng([config.seed, 1]).random(genome.size)]


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def run_search(
    config: SearchConfig,
    storage: str | Path,
    *,
    backend: Any = None,
    restart: bool = False,
    save_best: bool = False,
    on_info: Info | None = None,
) -> SearchResult:
    """Run (or resume) the search ``config`` in the folder ``storage``.

    ``backend``: a :class:`~meldkit.evolve.backends.BackendOptions` (default: serial, in
    this process). ``restart``: start afresh in a folder that holds an earlier search.
    ``save_best``: also merge the best recipe into ``storage/best_model``. ``on_info``
    receives one progress line per generation."""
    from meldkit.evolve.backends import BackendOptions, open_backend
    from meldkit.evolve.evaluate import EvaluatorFactory

    info = on_info or (lambda message: None)
    genome = plan_search(config)
    store = Storage(Path(storage))
    digest = config_hash(
        config.source_text, {"genes": genome.size, "base_dir": str(config.base_dir)}
    )
    recorded = store.open(digest, config.source_text, restart)
    previous = store.read_state() or {}
    optimizer = make_optimizer(
        config.optimizer,
        _start(config, genome),
        config.sigma0,
        config.seed,
        config.budget.population,
    )
    budget = config.budget
    info(
        f"searching {genome.size} genes ({', '.join(genome.searched)} of {genome.method.name}, "
        f"{genome.groups} layer group{'s' if genome.groups != 1 else ''}) with {config.optimizer}, "
        f"population {optimizer.population}, budget {budget.evaluations} evaluations"
        + (f" or {_duration(budget.wall_time)}" if budget.wall_time else "")
        + (f"; resuming after {len(recorded)} recorded" if recorded else "")
    )
    options = backend if backend is not None else BackendOptions(kind="serial")
    pool = open_backend(EvaluatorFactory(config), options, info)
    started = time.monotonic()
    elapsed_before = float(previous.get("elapsed_s", 0.0)) if not restart else 0.0
    scored_here = 0
    history: list[dict[str, Any]] = [recorded[i] for i in sorted(recorded)]
    index = generation = 0
    stop = "budget of evaluations spent"
    try:
        while True:
            if index >= budget.evaluations:
                break
            elapsed = elapsed_before + time.monotonic() - started
            if budget.wall_time is not None and elapsed >= budget.wall_time:
                stop = f"wall time of {_duration(budget.wall_time)} spent"
                break
            reason = optimizer.stop_reason()
            if reason:
                stop = f"the optimizer converged ({reason})"
                break
            asked = optimizer.ask()
            count = min(len(asked), budget.evaluations - index)
            batch = [
                Candidate(index + i, generation, tuple(g), genome.recipe(g))
                for i, g in enumerate(asked[:count])
            ]
            results = _score_generation(batch, recorded, pool, store, genome)
            scored_here += sum(1 for c in batch if c.index not in recorded)
            for record in results:
                recorded[record["index"]] = record
            history = [recorded[i] for i in sorted(recorded)]
            if count == len(asked):  # a generation cut short by the budget is not told
                optimizer.tell(asked, [_told(float(r["fitness"])) for r in results])
            index += count
            generation += 1
            elapsed = elapsed_before + time.monotonic() - started
            best = _publish(store, history, config, genome, optimizer.population, stop="")
            store.write_state(
                {
                    "config_hash": digest,
                    "generations": generation,
                    "evaluations": index,
                    "elapsed_s": round(elapsed, 3),
                    "best_index": None if best is None else best["index"],
                    "best_fitness": None if best is None else best["fitness"],
                    "finished": False,
                }
            )
            rate = scored_here / max(time.monotonic() - started, 1e-9) * 60
            scored = [float(r["fitness"]) for r in results if not math.isnan(r["fitness"])]
            mean = sum(scored) / len(scored) if scored else float("nan")
            info(
                f"generation {generation - 1}: {index}/{budget.evaluations} evaluations, "
                f"best {float(best['fitness']) if best else float('nan'):.4f}, "
                f"mean {mean:.4f}, {rate:.1f} evaluations/min, {_duration(elapsed)}"
            )
    finally:
        pool.close()
    best = _publish(store, history, config, genome, optimizer.population, stop=stop)
    state = store.read_state() or {}
    store.write_state({**state, "config_hash": digest, "finished": True, "stop_reason": stop})
    info(
        f"stopped: {stop}; best fitness {float(best['fitness']):.4f}"
        if best
        else f"stopped: {stop}"
    )
    result = SearchResult(store.folder, best, history, stop)
    if save_best and best is not None:
        result.best_model = _save_best(store.folder, config, info)
    return result


# A candidate whose fitness is NaN (a merge that broke the model) ranks below every other.
_WORST = -1e30


def _told(fitness: float) -> float:
    return _WORST if math.isnan(fitness) else fitness


def _score_generation(
    batch: list[Candidate],
    recorded: dict[int, dict[str, Any]],
    pool: Any,
    store: Storage,
    genome: Genome,
) -> list[dict[str, Any]]:
    """The records of ``batch``: recorded ones reused (after checking their genes), the rest
    scored and appended to the history."""
    for c in batch:
        old = recorded.get(c.index)
        if old is not None and [float(g) for g in old["genes"]] != list(c.genes):
            raise OptionError(
                f"the recorded candidate {c.index} in {store.history_path} is not the one this "
                "search proposes again (the search file, its inputs or meldkit changed)",
                hint="use another --storage folder, or --restart to start afresh",
            )
    todo = [c for c in batch if c.index not in recorded]
    fresh: dict[int, dict[str, Any]] = {}
    # One worker: one candidate at a time, each recorded as soon as it is scored, so a kill
    # loses at most the candidate in progress. Several: the whole batch at once.
    chunks = [[c] for c in todo] if pool.workers <= 1 else [todo]
    for chunk in chunks:
        if not chunk:
            continue
        for c, scores in zip(chunk, pool.map(chunk)):
            record = {
                "index": c.index,
                "generation": c.generation,
                "genes": list(c.genes),
                "values": genome.describe(list(c.genes)),
                "fitness": float(scores["fitness"]),
                "scores": scores,
                "recipe": c.recipe,
            }
            store.append(record)
            fresh[c.index] = record
    return [recorded.get(c.index) or fresh[c.index] for c in batch]


def _publish(
    store: Storage,
    history: list[dict[str, Any]],
    config: SearchConfig,
    genome: Genome,
    population: int,
    stop: str,
) -> dict[str, Any] | None:
    """Rewrite best_recipe.yaml, results.md and fitness.png; returns the best record."""
    best = best_record(history)
    if best is None:
        return None
    folder = store.folder
    write_best_recipe(folder / "best_recipe.yaml", best, str(folder / "search.yaml"))
    facts: dict[str, Any] = {
        "method": genome.method.name,
        "genes": genome.size,
        "optimizer": config.optimizer,
        "population": population,
        "seed": config.seed,
        "evaluations": len(history),
    }
    if stop:
        facts["stopped"] = stop
    write_table(folder / "results.md", history, facts)
    write_plot(folder / "fitness.png", history)
    return best


def _save_best(folder: Path, config: SearchConfig, info: Info) -> Path:
    from meldkit.api import run_merge

    out = folder / "best_model"
    info(f"merging the best recipe into {out}")
    run_merge(
        folder / "best_recipe.yaml",
        out,
        device=config.evaluation.device,
        overwrite=True,
        quiet=True,
        on_warning=info,
    )
    return out


def run_evolve(
    search: str | Path | dict[str, Any],
    storage: str | Path,
    *,
    ray: bool = False,
    ray_address: str | None = None,
    workers: int | None = None,
    cpus_per_worker: int = 1,
    gpus_per_worker: float = 0,
    restart: bool = False,
    save_best: bool = False,
    on_info: Info | None = None,
) -> SearchResult:
    """What ``meldkit evolve SEARCH --storage STORAGE`` does: load the search file (a path,
    YAML text or a dict), run or resume it, and return the :class:`SearchResult`.

    ``ray``/``ray_address``: score candidates on Ray workers (``workers`` of them, each with
    ``cpus_per_worker`` CPUs and ``gpus_per_worker`` GPUs); otherwise in this process."""
    from meldkit.evolve.config import load_search_config

    return run_search(
        load_search_config(search),
        storage,
        backend=backend_options(ray, ray_address, workers, cpus_per_worker, gpus_per_worker),
        restart=restart,
        save_best=save_best,
        on_info=on_info,
    )


def backend_options(
    ray: bool,
    ray_address: str | None,
    workers: int | None,
    cpus_per_worker: int,
    gpus_per_worker: float,
) -> Any:
    """The :class:`~meldkit.evolve.backends.BackendOptions` of ``meldkit evolve``'s worker
    options: Ray when asked for (``ray``, or an address), else this process."""
    from meldkit.evolve.backends import BackendOptions

    return BackendOptions(
        kind="ray" if ray or ray_address is not None else "serial",
        address=ray_address,
        workers=workers,
        cpus_per_worker=cpus_per_worker,
        gpus_per_worker=gpus_per_worker,
    )
