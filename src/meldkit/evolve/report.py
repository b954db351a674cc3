"""What a search leaves for people: the best recipe, a results table and a fitness plot.

- ``best_recipe.yaml``: the best candidate as a normal recipe (``meldkit merge`` runs it),
  headed by a comment with its fitness and where it came from.
- ``results.md``: per generation, the evaluations so far, the best so far and the generation's
  best and mean; then the best candidate's scores and parameter values.
- ``fitness.png``: best-so-far and mean fitness per generation (needs matplotlib, the
  ``meldkit[evolve]`` extra; without it the plot is skipped and the caller is told).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from meldkit.evolve.storage import atomic_write

__all__ = ["generation_stats", "write_best_recipe", "write_plot", "write_table"]


def generation_stats(history: Sequence[dict[str, Any]]) -> list[dict[str, float]]:
    """Per generation: ``generation``, ``evaluations`` (so far), ``best`` (so far),
    ``generation_best`` and ``mean``; NaN fitness (a broken candidate) counts in neither."""
    by_gen: dict[int, list[float]] = {}
    for record in history:
        by_gen.setdefault(int(record["generation"]), []).append(float(record["fitness"]))
    rows, best, count = [], -math.inf, 0
    for gen in sorted(by_gen):
        values = by_gen[gen]
        count += len(values)
        scored = [v for v in values if not math.isnan(v)]
        top = max(scored, default=math.nan)
        best = max(best, top) if scored else best
        rows.append(
            {
                "generation": gen,
                "evaluations": count,
                "best": best,
                "generation_best": top,
                "mean": sum(scored) / len(scored) if scored else math.nan,
            }
        )
    return rows


def best_record(history: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The best candidate (the first one on ties, so the choice never depends on timing)."""
    best: dict[str, Any] | None = None
    for record in history:
        value = float(record["fitness"])
        if not math.isnan(value) and (best is None or value > float(best["fitness"])):
            best = record
    return best


def write_best_recipe(path: Path, record: dict[str, Any], search_file: str) -> None:
    """``best_recipe.yaml`` for ``record`` (a history line with its ``recipe``)."""
    header = (
        f"# meldkit evolve: best of the search {search_file}\n"
        f"# candidate {record['index']} (generation {record['generation']}), "
        f"fitness {float(record['fitness']):.6g}\n"
        "# run it with: meldkit merge best_recipe.yaml OUT\n"
    )
    atomic_write(path, header + yaml.safe_dump(record["recipe"], sort_keys=False))


def write_table(path: Path, history: Sequence[dict[str, Any]], info: dict[str, Any]) -> None:
    """``results.md``: the per-generation table and the best candidate."""
    lines = [
        "# meldkit evolve results",
        "",
        ", ".join(f"{k}: {v}" for k, v in info.items()),
        "",
        "| generation | evaluations | best so far | generation best | generation mean |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in generation_stats(history):
        lines.append(
            f"| {row['generation']} | {row['evaluations']} | {row['best']:.4f} | "
            f"{row['generation_best']:.4f} | {row['mean']:.4f} |"
        )
    best = best_record(history)
    if best is not None:
        lines += [
            "",
            f"## Best: candidate {best['index']} (generation {best['generation']})",
            "",
            "| score | value |",
            "|---|---:|",
        ]
        lines += [f"| {k} | {float(v):.4f} |" for k, v in best["scores"].items()]
        lines += ["", "| gene | value |", "|---|---:|"]
        lines += [f"| {k} | {float(v):.4f} |" for k, v in best["values"].items()]
    atomic_write(path, "\n".join(lines) + "\n")


def write_plot(path: Path, history: Sequence[dict[str, Any]]) -> bool:
    """``fitness.png``; False (nothing written) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = generation_stats(history)
    if not rows:
        return False
    gens = [r["generation"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    ax.plot(gens, [r["best"] for r in rows], label="best so far", marker="o", markersize=3)
    ax.plot(gens, [r["mean"] for r in rows], label="generation mean", marker=".", alpha=0.8)
    ax.set_xlabel("generation")
    ax.set_ylabel("fitness")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return True
