"""TinyTasks: does a budgeted `meldkit evolve` search beat the best hand-set recipe?

    python benchmarks/evolve.py                                   # fp32 set, 200 evaluations, seed 0
    python benchmarks/evolve.py --models ROOT --budget 200 --seed 0 --workers 2
    python benchmarks/evolve.py --write-doc                        # also fill docs/evolve.md
    python benchmarks/evolve.py --render results/evolve-fp32/evolve.json --write-doc

In one process run:

1. **Hand-set recipes** (the baseline): linear, task arithmetic (lambda 0.3 / 0.5 / 1.0),
   TIES (density 0.2 / 0.5) as in TinyTasks' reference recipes, and every data-free method
   meldkit adds (tsv, iso_c, iso_cts, wudi, pcb, magmax, consensus) at its default parameters.
   Each is merged with ``meldkit.run_merge`` and scored on the **report** prompts (TinyTasks'
   200 held-out prompts per task, exactly eval.py's) as the normalized score.
2. **The search**: the search file below (``--genome``), scored on the **search** prompts
   (pool 200..200+n, never the report prompts), with the stated budget, population and seed,
   on ``--workers`` Ray workers of one CPU each (serial with ``--workers 1``).
3. **The check**: ``best_recipe.yaml`` is merged with ``meldkit.run_merge`` like any recipe,
   scored again with the search's own fitness (it must equal what the search reported) and
   on the report prompts (the number compared with the baseline).

Results go to ``--out`` (default ``benchmarks/results/evolve-<set>``): the search folder and
``evolve.json``; ``--write-doc`` renders them between ``<!-- evolve:begin -->`` and
``<!-- evolve:end -->`` in docs/evolve.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# benchmarks/profile.py would shadow the standard library's profile module (torch imports it).
if sys.path and Path(sys.path[0] or ".").resolve() == HERE:
    sys.path.pop(0)


TASKS = ("rev", "srt", "sft", "dup")
NEW_METHODS = ("tsv", "iso_c", "iso_cts", "wudi", "pcb", "magmax", "consensus")


def hand_set(root: Path, dtype: str) -> dict[str, dict[str, Any]]:
    """The baseline recipes, by row name."""
    fts = [str(root / f"ft_{t}") for t in TASKS]
    base = str(root / "base")

    def recipe(method: str, model_params: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        r: dict[str, Any] = {
            "merge_method": method,
            "models": [
                {"model": m, **({"parameters": model_params} if model_params else {})} for m in fts
            ],
            "dtype": dtype,
        }
        if method != "linear":
            r["base_model"] = base
        if params:
            r["parameters"] = params
        return r

    rows = {"linear": recipe("linear", {"weight": 1.0}, {})}
    for lam in (0.3, 0.5, 1.0):
        rows[f"task_arithmetic λ{lam}"] = recipe(
            "task_arithmetic", {"weight": 1.0}, {"lambda": lam}
        )
    for density in (0.2, 0.5):
        rows[f"ties d{density}"] = recipe(
            "ties", {"weight": 1.0, "density": density}, {"normalize": True}
        )
    for method in NEW_METHODS:
        rows[f"{method} (defaults)"] = recipe(method, {}, {})
    return rows


GENOMES: dict[str, dict[str, Any]] = {
    # TSV-M with a weight per task vector and the shared alpha, embeddings averaged and task
    # vectors rescaled to a common norm (the best hand-tuned tsv row of docs/methods.md).
    "tsv": {
        "merge_method": "tsv",
        "search": {"weight": [0.0, 1.5], "alpha": [0.5, 2.5]},
        "parameters": {"embeddings": "mean", "norm_match": "mean"},
    },
    # Task arithmetic with a weight per model and per half of the layers.
    "task_arithmetic": {
        "merge_method": "task_arithmetic",
        "layer_granularity": 2,
        "search": {"weight": [0.0, 1.2]},
    },
}


def search_file(root: Path, dtype: str, genome: str, args: argparse.Namespace) -> dict[str, Any]:
    gen = {
        "models": [str(root / f"ft_{t}") for t in TASKS],
        "base_model": str(root / "base"),
        "dtype": dtype,
        **GENOMES[genome],
    }
    return {
        "genome": gen,
        "fitness": [
            {
                "tinytasks": {
                    "n": args.n,
                    "split": "search",
                    "finetunes": {t: str(root / f"ft_{t}") for t in TASKS},
                }
            }
        ],
        "budget": {"evaluations": args.budget, "population": args.population},
        "optimizer": args.optimizer,
        "seed": args.seed,
    }


def load(folder: Path) -> Any:
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    return model.eval()


def report_accuracy(folder: Path) -> dict[str, float]:
    from meldkit.evolve.fitness.tinytasks import evaluate_tinytasks

    return evaluate_tinytasks(load(folder), n=200, split="report", tasks=TASKS)


def normalized(acc: dict[str, float], own: dict[str, float]) -> float:
    return sum(acc[t] / own[t] for t in TASKS) / len(TASKS)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--models",
        type=Path,
        default=REPO.parent / "shared/tinytasks/models/fp32",
        help="a TinyTasks set: base/ and ft_<task>/ (default: the shared fp32 set)",
    )
    ap.add_argument(
        "--dtype", default=None, help="merge dtype (default: float32, bfloat16 for a bf16 set)"
    )
    ap.add_argument("--genome", choices=sorted(GENOMES), default="tsv")
    ap.add_argument("--budget", type=int, default=200, help="evaluations (200)")
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--optimizer", choices=("cma", "random"), default="cma")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=100, help="search prompts per task (100)")
    ap.add_argument("--workers", type=int, default=2, help="Ray workers of 1 CPU (1: serial)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--write-doc", action="store_true")
    ap.add_argument(
        "--render", type=Path, help="only render a saved evolve.json (with --write-doc)"
    )
    args = ap.parse_args()
    if args.render is not None:
        block = render(json.loads(args.render.read_text()))
        print(block)
        if args.write_doc:
            write_doc(block)
        return 0

    import torch

    import meldkit
    from meldkit.evolve import BackendOptions, load_search_config, run_search
    from meldkit.evolve.fitness import parse_fitness

    root = args.models.resolve()
    set_name = root.name
    dtype = args.dtype or ("bfloat16" if "bf16" in set_name else "float32")
    out = (args.out or HERE / "results" / f"evolve-{set_name}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    started = time.time()

    own = {t: report_accuracy(root / f"ft_{t}")[t] for t in TASKS}
    print(f"fine-tunes on the report prompts: {own}", file=sys.stderr)
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, recipe in hand_set(root, dtype).items():
            folder = Path(tmp) / name.replace(" ", "_")
            meldkit.run_merge(recipe, folder, quiet=True, on_warning=lambda m: None)
            acc = report_accuracy(folder)
            rows[name] = {"norm": normalized(acc, own), **{t: acc[t] for t in TASKS}}
            print(f"{name:28s} norm {rows[name]['norm']:.3f}", file=sys.stderr)
    best_hand = max(rows, key=lambda k: rows[k]["norm"])

    data = search_file(root, dtype, args.genome, args)
    config = load_search_config(data)
    storage = out / "search"
    backend = BackendOptions(
        kind="ray" if args.workers > 1 else "serial", workers=args.workers, cpus_per_worker=1
    )
    search_started = time.time()
    result = run_search(
        config, storage, backend=backend, restart=True, on_info=lambda m: print(m, file=sys.stderr)
    )
    search_seconds = time.time() - search_started
    assert result.best is not None

    # The best recipe, merged like any recipe, scored with the search's fitness and on the
    # report prompts.
    merged = out / "best_model"
    meldkit.run_merge(
        storage / "best_recipe.yaml", merged, overwrite=True, quiet=True, on_warning=lambda m: None
    )
    torch.set_num_threads(1)  # the workers' thread count, for the same numbers
    refit = parse_fitness(config.fitness, base_dir=config.base_dir)(load(merged), None)
    torch.set_num_threads(2)
    acc = report_accuracy(merged)
    searched = {"norm": normalized(acc, own), **{t: acc[t] for t in TASKS}}
    summary = {
        "set": str(root),
        "dtype": dtype,
        "genome": args.genome,
        "search_file": data,
        "budget": args.budget,
        "population": args.population,
        "optimizer": args.optimizer,
        "seed": args.seed,
        "workers": args.workers,
        "search_prompts_per_task": args.n,
        "evaluations": len(result.history),
        "search_seconds": round(search_seconds, 1),
        "evaluations_per_minute": round(len(result.history) / search_seconds * 60, 2),
        "search_fitness": result.best["fitness"],
        "refit_fitness": refit["fitness"],
        "best_values": result.best["values"],
        "best_recipe": result.best["recipe"],
        "searched": searched,
        "hand_set": rows,
        "best_hand_set": best_hand,
        "margin": searched["norm"] - rows[best_hand]["norm"],
        "total_seconds": round(time.time() - started, 1),
        "command": "python " + " ".join(sys.argv),
    }
    (out / "evolve.json").write_text(json.dumps(summary, indent=1))
    print(render(summary))
    if args.write_doc:
        write_doc(render(summary))
    return 0


def render(s: dict[str, Any]) -> str:
    """The Markdown table of one benchmark run."""
    lines = [
        f"Set `{Path(s['set']).name}` (merged in {s['dtype']}); search: genome `{s['genome']}`, "
        f"{s['optimizer']} with population {s['population']}, seed {s['seed']}, budget "
        f"{s['budget']} evaluations on {s['workers']} worker(s) of 1 CPU, "
        f"{s['search_prompts_per_task']} search prompts per task; {s['search_seconds']:.0f} s "
        f"({s['evaluations_per_minute']:.1f} evaluations/min).",
        "",
        "| recipe | rev | srt | sft | dup | norm (report prompts) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    best = s["best_hand_set"]
    for name, row in sorted(s["hand_set"].items(), key=lambda kv: -kv[1]["norm"]):
        mark = "**" if name == best else ""
        lines.append(
            f"| {mark}{name}{mark} | "
            + " | ".join(f"{row[t]:.3f}" for t in TASKS)
            + f" | {mark}{row['norm']:.3f}{mark} |"
        )
    row = s["searched"]
    lines.append(
        "| **evolve: best_recipe.yaml** | "
        + " | ".join(f"{row[t]:.3f}" for t in TASKS)
        + f" | **{row['norm']:.3f}** |"
    )
    lines += [
        "",
        f"Margin over the best hand-set recipe ({best}): {s['margin']:+.3f}. The search's best "
        f"fitness (search prompts) was {s['search_fitness']:.4f}; `best_recipe.yaml` merged "
        f"with `meldkit merge` scores {s['refit_fitness']:.4f} on the same prompts.",
        "",
        "Best parameters: " + ", ".join(f"{k} {v:.3f}" for k, v in s["best_values"].items()) + ".",
        "",
        f"Command: `{s['command']}`",
    ]
    return "\n".join(lines)


def write_doc(block: str) -> None:
    doc = REPO / "docs" / "evolve.md"
    text = doc.read_text(encoding="utf-8")
    begin, end = "<!-- evolve:begin -->", "<!-- evolve:end -->"
    head, _, rest = text.partition(begin)
    _, _, tail = rest.partition(end)
    doc.write_text(f"{head}{begin}\n{block}\n{end}{tail}", encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
