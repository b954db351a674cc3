"""Speed and memory of the live tree against an older commit, side by side in one run.

    python benchmarks/compare_trees.py --old f271d9a --sets small med --methods all --repeat 3

The question after a restructuring: is anything slower or bigger? Comparing against the
numbers of an earlier day does not answer it on this machine, whose speed drifts by tens of
percent between days and minutes. So each method is merged by the old tree and by the new one
in alternation (old, new, new, old, ...: each repeat flips the order), every merge its own
process (``python -m meldkit merge RECIPE OUT --quiet --overwrite --random-seed 0``, timed by
``benchmarks/run.py``'s ``timed``: wall time, user+sys CPU and peak RSS from ``wait4``), and
the table reports the medians and the new/old ratios (above 1: the new tree is slower).

The trees, sets and recipes are ``benchmarks/same_bytes.py``'s and ``benchmarks/run.py``'s:
the old tree is ``git archive REV src`` under ``DATA/trees/``, the new one a frozen copy of
``src/`` (or, with ``--new REV2``, that commit's tree); each has its own numba cache (``NUMBA_CACHE_DIR``), warmed by one untimed merge per
method and tree before the timed ones. Saves the rows as JSON in ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import run as bench  # noqa: E402  (benchmarks/run.py, beside this script)
import same_bytes  # noqa: E402

FLAGS = ["--quiet", "--overwrite", "--random-seed", "0"]


def timed_merge(tree: same_bytes.Tree, recipe: Path, out: Path, log: Path, timeout: float) -> Any:
    """One timed merge process of ``tree`` (its PYTHONPATH and numba cache)."""
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)  # older trees refuse a missing parent
    bench.prepare(out, cold=False)
    argv = [sys.executable, "-m", "meldkit", "merge", str(recipe), str(out), *FLAGS]
    return bench.timed(f"{tree.kind} {recipe.stem}", argv, log, timeout, tree.work, tree.env(None))


def compare_method(
    spec: Any, folder: Path, trees: list[same_bytes.Tree], args: argparse.Namespace
) -> dict[str, Any] | None:
    made = bench.make_recipe(spec, folder)
    if isinstance(made, str):
        print(f"{spec.name}: skipped ({made})", flush=True)
        return None
    recipe = args.data / "recipes" / f"compare_{folder.name}_{spec.name}.yml"
    bench.write_yaml(recipe, made[0])
    out = args.data / "compare-out" / f"{folder.name}_{spec.name}"
    logs = args.data / "logs" / "compare"
    for tree in trees:  # untimed: numba loads (or compiles) its kernels into this tree's cache
        first = timed_merge(tree, recipe, out, logs / f"warm_{tree.kind}_{spec.name}.log", 3600)
        if first.returncode:
            raise SystemExit(f"{tree.kind} tree failed on {spec.name}; see {first.log}")
    runs: dict[str, list[Any]] = {t.kind: [] for t in trees}
    for r in range(args.repeat):
        for tree in trees if r % 2 == 0 else trees[::-1]:
            log = logs / f"{tree.kind}_{folder.name}_{spec.name}_{r}.log"
            runs[tree.kind].append(timed_merge(tree, recipe, out, log, args.timeout))
    shutil.rmtree(out, ignore_errors=True)

    def med(kind: str, field: str) -> float:
        return statistics.median(getattr(x, field) for x in runs[kind])

    row: dict[str, Any] = {"method": spec.name, "set": folder.name, "repeat": args.repeat}
    for kind in ("old", "new"):
        row[kind] = {
            "wall_s": round(med(kind, "wall_s"), 2),
            "cpu_s": round(statistics.median(x.user_s + x.sys_s for x in runs[kind]), 2),
            "rss_mb": round(med(kind, "rss_bytes") / 1e6),
            "other_cpu_s": round(med(kind, "other_cpu_s"), 1),
        }
    for field in ("wall_s", "cpu_s", "rss_mb"):
        row[f"{field}_ratio"] = round(row["new"][field] / max(row["old"][field], 1e-9), 3)
    return row


def format_row(row: dict[str, Any]) -> str:
    o, n = row["old"], row["new"]
    return (
        f"| {row['method']} | {row['set']} | {o['wall_s']:.1f} | {n['wall_s']:.1f} | "
        f"{row['wall_s_ratio']:.2f} | {o['cpu_s']:.1f} | {n['cpu_s']:.1f} | "
        f"{row['cpu_s_ratio']:.2f} | {o['rss_mb']} | {n['rss_mb']} | {row['rss_mb_ratio']:.2f} | "
        f"{max(o['other_cpu_s'], n['other_cpu_s']):.1f} |"
    )


HEADER = (
    "| method | set | wall old s | wall new s | new/old | CPU old s | CPU new s | new/old "
    "| RSS old MB | RSS new MB | new/old | others' CPU s |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old", required=True, help="the commit to compare against")
    p.add_argument("--new", default=None, help="a commit instead of the live src/ (default)")
    p.add_argument("--sets", nargs="+", default=["small"], choices=sorted(bench.SETS))
    p.add_argument("--methods", nargs="+", default=["all"], help="'all' or method names")
    p.add_argument("--repeat", type=int, default=3, help="timed merges per tree and method")
    p.add_argument("--data", type=Path, default=bench.REPO / "bench-data")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per merge")
    args = p.parse_args(argv)
    args.data = args.data.resolve()
    old = same_bytes.old_tree(args.old, args.data)
    if args.new:
        new = same_bytes.old_tree(args.new, args.data)
        new.kind = "new"
    else:
        new = same_bytes.new_tree(args.data)
    for tree in (old, new):
        tree.work.mkdir(parents=True, exist_ok=True)
    specs, skipped = bench.select_methods(args.methods)
    for s in skipped:
        print(f"{s['method']}: skipped ({s['why']})")
    rows = []
    print(f"old {old.ident} vs new snapshot {new.ident}\n{HEADER}", flush=True)
    for name in args.sets:
        bench.make_set(name, args.data, args.timeout)
        for spec in specs:
            row = compare_method(spec, args.data / name, [old, new], args)
            if row is not None:
                rows.append(row)
                print(format_row(row), flush=True)
    stamp = _dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    results = bench.HERE / "results"
    results.mkdir(exist_ok=True)
    report = {"old": old.ident, "new": new.ident, "argv": sys.argv, "rows": rows}
    (results / f"compare-{stamp}.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
