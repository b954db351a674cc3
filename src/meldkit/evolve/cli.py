"""``meldkit evolve``: the subcommand's options and body.

No torch at import time: ``meldkit --help`` imports this module.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from meldkit.cli import options as common

__all__ = ["add_parser", "cmd_evolve"]

_DESCRIPTION = (
    "Search a merge recipe's parameters (per-model weights, densities... per layer group) "
    "with CMA-ES or random search, scoring each candidate with a fitness: TinyTasks, "
    "perplexity on a text file, lm-eval tasks or your own Python function. Candidates are "
    "merged in memory into a loaded model where they fit. The search is checkpointed in "
    "--storage after every generation and resumes where it stopped when run again; there it "
    "leaves best_recipe.yaml (a normal recipe), history.jsonl, results.md and fitness.png. "
    "With --ray (or --ray-address) candidates are scored on Ray workers. Needs the "
    "meldkit[evolve] extra (and meldkit[ray] for Ray)."
)


def add_parser(sub: Any) -> None:
    """Add ``evolve`` to the ``meldkit`` subcommands."""
    p = sub.add_parser(
        "evolve", help="evolutionary search of a recipe's parameters", description=_DESCRIPTION
    )
    p.add_argument("search", help="the search file (YAML: genome, fitness, budget)")
    p.add_argument(
        "--storage",
        "--storage-path",
        dest="storage",
        required=True,
        help="folder for the search's state and results (reused to resume)",
    )
    p.add_argument("--restart", action="store_true", help="start afresh in a used --storage")
    p.add_argument(
        "--save-best",
        "--merge-best",
        dest="save_best",
        action="store_true",
        help="also merge the best recipe into STORAGE/best_model at the end",
    )
    budget = p.add_argument_group("budget (override the search file's)")
    budget.add_argument(
        "--max-evaluations",
        "--max-fevals",
        dest="evaluations",
        type=int,
        help="stop after this many candidates",
    )
    budget.add_argument(
        "--wall-time", dest="wall_time", help='stop after this long: seconds, "30m", "2h"'
    )
    budget.add_argument("--population", type=int, help="candidates per generation")
    budget.add_argument("--seed", type=int, help="the optimizer's seed")
    budget.add_argument(
        "--optimizer", choices=("cma", "random"), help="cma (CMA-ES) or random search"
    )
    workers = p.add_argument_group("workers")
    workers.add_argument(
        "--ray", action="store_true", help="score candidates on Ray workers (ray.init() locally)"
    )
    workers.add_argument("--ray-address", help="a Ray cluster's address (implies --ray)")
    workers.add_argument(
        "--workers", type=int, help="evaluation workers (default: fill the cluster)"
    )
    workers.add_argument("--cpus-per-worker", type=int, default=1, help="CPUs per worker (1)")
    workers.add_argument(
        "--gpus-per-worker", type=float, default=0, help="GPUs per worker (1: one worker per GPU)"
    )
    workers.add_argument("--device", default=None, help="math and model device: cpu, cuda[:N]")
    workers.add_argument("--cuda", action="store_true", help="same as --device cuda")
    p.add_argument("--quiet", action="store_true", help="print the final summary only")
    common.add_debug(p)
    p.set_defaults(func=cmd_evolve)


def _overridden(config: Any, args: argparse.Namespace) -> Any:
    """The search file's config with the command line's budget and device options."""
    from dataclasses import replace

    from meldkit.evolve.config import parse_duration

    budget = config.budget
    if args.evaluations is not None:
        budget = replace(budget, evaluations=args.evaluations)
    if args.wall_time is not None:
        budget = replace(budget, wall_time=parse_duration(args.wall_time, "--wall-time"))
    if args.population is not None:
        budget = replace(budget, population=args.population)
    changes: dict[str, Any] = {"budget": budget}
    if args.seed is not None:
        changes["seed"] = args.seed
    if args.optimizer is not None:
        changes["optimizer"] = args.optimizer
    device = args.device or ("cuda" if args.cuda else None)
    if device is not None:
        changes["evaluation"] = replace(config.evaluation, device=device)
    return replace(config, **changes)


def cmd_evolve(args: argparse.Namespace) -> int:
    """Run or resume the search; returns the exit code."""
    from meldkit.evolve import load_search_config, run_search
    from meldkit.evolve.search import backend_options

    config = _overridden(load_search_config(args.search), args)
    backend = backend_options(
        args.ray, args.ray_address, args.workers, args.cpus_per_worker, args.gpus_per_worker
    )

    def info(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    result = run_search(
        config,
        args.storage,
        backend=backend,
        restart=args.restart,
        save_best=args.save_best,
        on_info=info,
    )
    if result.best is None:
        print(f"no candidate was scored ({result.stop_reason})")
        return 1
    best = result.best
    print(
        f"best fitness {float(best['fitness']):.4f} (candidate {best['index']} of "
        f"{len(result.history)}); recipe: {result.storage / 'best_recipe.yaml'}"
    )
    if result.best_model is not None:
        print(f"best model: {result.best_model}")
    return 0
