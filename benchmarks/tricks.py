"""Does each process-level trick of the ``meldkit`` command still pay for itself?

    python benchmarks/tricks.py --set small --methods ties della --repeat 5

For each method, runs the same merge (``python -m meldkit merge RECIPE OUT --quiet
--overwrite``) with every trick of :mod:`meldkit.cli.process` on, and with each trick in turn
switched off (``MELDKIT_TRICKS_OFF=<trick>``), as separate processes: each repeat runs every
variant once, in an order rotated from one repeat to the next, so on and off alternate and
drift in the machine's load spreads over all of them (the "on" runs are the same for every
trick of a method). It reports the medians of wall time, user+sys CPU and peak RSS
(``os.wait4``) and the on/off ratios: below 1 the trick pays. The rules of ``run.py`` apply:
warm page cache, the previous output deleted and ``sync`` called outside the timed region, an
untimed merge first (numba compiles and caches its kernels), and a frozen copy of ``src/``
(``--src`` runs another tree). ``OMP_WAIT_POLICY`` is removed from the environment, or
``omp_passive`` would have nothing to do. ``--show FILE...`` prints the table of saved results.

Results on ``small`` (2 CPUs shared with other work: "others' CPU" is what other processes
used during a median run, up to 1.5 times the merge's own), from::

    python benchmarks/tricks.py --set small --methods ties della --repeat 4
    python benchmarks/tricks.py --set small --methods linear della --repeat 5

Medians; "paired off-on" is the median over the repeats of the off run minus the on run of the
same repeat (above 0: the trick pays); on/off ratios below 1: the trick pays::

    | trick | method | wall on / off s | ratio | paired off-on | CPU on / off s | ratio | paired off-on | RSS on / off MB | others' CPU s |
    |---|---|---:|---:|---:|---:|---:|---:|---:|---:|
    | omp_passive | ties | 13.01 / 12.89 | 1.01 | -0.03 | 9.33 / 10.07 | 0.93 | +0.81 | 731 / 731 | 15 |
    | gc_freeze | ties | 13.01 / 12.52 | 1.04 | +0.64 | 9.33 / 8.88 | 1.05 | -0.65 | 731 / 730 | 15 |
    | fast_exit | ties | 13.01 / 13.75 | 0.95 | -0.85 | 9.33 / 9.41 | 0.99 | +0.01 | 731 / 732 | 15 |
    | omp_passive | della | 8.78 / 12.58 | 0.70 | +1.52 | 11.40 / 12.23 | 0.93 | +1.10 | 739 / 738 | 0 |
    | gc_freeze | della | 8.78 / 10.44 | 0.84 | +1.54 | 11.40 / 11.66 | 0.98 | +0.29 | 739 / 738 | 0 |
    | fast_exit | della | 8.78 / 9.32 | 0.94 | +0.02 | 11.40 / 11.39 | 1.00 | +0.17 | 739 / 738 | 0 |
    | omp_passive | linear | 7.98 / 12.08 | 0.66 | +2.47 | 5.39 / 7.99 | 0.67 | +2.64 | 486 / 462 | 11 |
    | gc_freeze | linear | 7.98 / 8.73 | 0.91 | +0.38 | 5.39 / 5.69 | 0.95 | +0.30 | 486 / 435 | 11 |
    | fast_exit | linear | 7.98 / 8.26 | 0.97 | +0.18 | 5.39 / 5.75 | 0.94 | +0.24 | 486 / 465 | 11 |
    | omp_passive | della | 12.56 / 12.67 | 0.99 | +1.87 | 11.50 / 11.98 | 0.96 | +0.74 | 738 / 738 | 14 |
    | gc_freeze | della | 12.56 / 11.54 | 1.09 | +0.82 | 11.50 / 12.40 | 0.93 | +1.10 | 738 / 738 | 14 |
    | fast_exit | della | 12.56 / 11.98 | 1.05 | +0.78 | 11.50 / 12.26 | 0.94 | +0.75 | 738 / 739 | 14 |

Verdict, all three kept:

* ``omp_passive`` pays in every row: 0.7-2.6 s less CPU (on/off 0.67-0.96), and 1.5-2.5 s less
  wall time for della and linear (ties' wall time did not resolve at that load).
* ``gc_freeze`` saves wall time in every row (paired 0.4-1.5 s) and CPU in three of four
  (0.3-1.1 s; ties -0.65 s). It costs about 40 MB of peak RSS where the
  import dominates the peak (linear: 486 against 435 MB; della and ties unchanged), which is
  still far below the 1 GB target.
* ``fast_exit`` never costs CPU (paired 0.01-0.75 s less: the teardown it skips) and saves wall
  time in three of four rows; the smallest gain, at the edge of this machine's noise, and free.

These runs timed a tree whose ``cmd_merge`` imports the engine inside
``meldkit.cli.process.engine_import()``; ``MELDKIT_TRICKS_OFF=gc_freeze`` has no effect on a
``cmd_merge`` that pauses the collector by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as bench  # noqa: E402  (benchmarks/run.py: sets, recipes, timed runs)

OFF_ENV = "MELDKIT_TRICKS_OFF"  # meldkit.cli.process.TRICKS_OFF_ENV


def use_tree(src: Path | None, data: Path) -> Path:
    """Import meldkit (here and in every child) from ``src``, or from a frozen copy of src/."""
    if src is None:
        return bench.use_sources(data, snapshot=True)
    root = src.resolve()
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(root)] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    )
    sys.path.insert(0, str(root))
    return root


def merge_once(recipe: Path, out: Path, log: Path, off: str | None, timeout: float) -> bench.Run:
    """One timed merge process, with the trick ``off`` switched off (None: every trick on)."""
    os.environ.pop(OFF_ENV, None)
    if off:
        os.environ[OFF_ENV] = off
    try:
        bench.prepare(out, cold=False)
        argv = [
            sys.executable,
            "-m",
            "meldkit",
            "merge",
            str(recipe),
            str(out),
            "--quiet",
            "--overwrite",
        ]
        run = bench.timed(f"{recipe.stem} {off or 'on'}", argv, log, timeout)
    finally:
        os.environ.pop(OFF_ENV, None)
    if run.returncode != 0:
        raise SystemExit(f"merge failed ({run.returncode}); see {log}")
    return run


def summary(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Medians of wall, CPU (user + sys) and peak RSS of ``runs`` (``bench.Run`` as dicts),
    and of the CPU other processes used meanwhile (how contended the machine was)."""
    return {
        "wall_s": statistics.median(r["wall_s"] for r in runs),
        "cpu_s": statistics.median(_cpu(r) for r in runs),
        "rss_mb": statistics.median(r["rss_bytes"] for r in runs) / 1e6,
        "other_cpu_s": statistics.median(r["other_cpu_s"] for r in runs),
    }


def _cpu(run: dict[str, Any]) -> float:
    return float(run["user_s"] + run["sys_s"])


def paired(row: dict[str, Any], key: str) -> float:
    """Median over the repeats of (off - on) for ``key`` ("wall_s" or "cpu"): the runs of one
    repeat ran back to back, so this cancels most of the drift in the machine's load."""
    on, off = row["runs"]["on"], row["runs"]["off"]
    value = _cpu if key == "cpu" else (lambda r: float(r[key]))
    return statistics.median(value(b) - value(a) for a, b in zip(on, off, strict=True))


def table(rows: list[dict[str, Any]]) -> str:
    """The results as Markdown: medians, on/off ratios (below 1: the trick pays) and the
    paired differences (above 0: the trick pays)."""
    lines = [
        "| trick | method | wall on / off s | ratio | paired off-on | "
        "CPU on / off s | ratio | paired off-on | RSS on / off MB | others' CPU s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        on, off = summary(r["runs"]["on"]), summary(r["runs"]["off"])
        lines.append(
            f"| {r['trick']} | {r['method']} | {on['wall_s']:.2f} / {off['wall_s']:.2f} | "
            f"{on['wall_s'] / off['wall_s']:.2f} | {paired(r, 'wall_s'):+.2f} | "
            f"{on['cpu_s']:.2f} / {off['cpu_s']:.2f} | {on['cpu_s'] / off['cpu_s']:.2f} | "
            f"{paired(r, 'cpu'):+.2f} | {on['rss_mb']:.0f} / {off['rss_mb']:.0f} | "
            f"{on['other_cpu_s']:.0f} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", default="small", choices=list(bench.SETS), dest="set_name")
    ap.add_argument("--methods", nargs="+", default=["ties", "della"])
    ap.add_argument(
        "--tricks",
        nargs="+",
        default=None,
        help="tricks to switch off in turn (default: all of meldkit.cli.process)",
    )
    ap.add_argument("--repeat", type=int, default=5, help="runs of each variant per method")
    ap.add_argument("--data", type=Path, default=bench.REPO / "bench-data")
    ap.add_argument(
        "--src",
        type=Path,
        default=None,
        help="folder holding the meldkit package to time (default: a snapshot of src/)",
    )
    ap.add_argument("--timeout", type=float, default=600, help="seconds per process")
    ap.add_argument("--json", type=Path, default=HERE / "results" / "tricks.json")
    ap.add_argument(
        "--show",
        type=Path,
        nargs="+",
        default=None,
        metavar="JSON",
        help="print the table of saved results instead of measuring",
    )
    a = ap.parse_args()
    if a.show:
        print(table([row for f in a.show for row in json.loads(f.read_text())["rows"]]))
        return 0

    use_tree(a.src, a.data)
    from meldkit.cli.process import TRICKS

    os.environ.pop("OMP_WAIT_POLICY", None)
    tricks = a.tricks or list(TRICKS)
    folder = a.data / a.set_name
    bench.make_set(a.set_name, a.data, a.timeout)  # reused when it exists
    specs, skipped = bench.select_methods(a.methods)
    for s in skipped:
        print(f"skipped {s['method']}: {s['why']}")
    work = a.data / "tricks"
    rows: list[dict[str, Any]] = []
    for spec in specs:
        made = bench.make_recipe(spec, folder)
        if isinstance(made, str):
            print(f"skipped {spec.name}: {made}")
            continue
        recipe = work / "recipes" / f"{a.set_name}-{spec.name}.yml"
        bench.write_yaml(recipe, made[0])
        out, logs = work / "out", work / "logs"
        merge_once(recipe, out, logs / "warmup.log", None, a.timeout)  # compile, warm the cache
        variants: list[str | None] = [None, *tricks]  # None: every trick on
        runs: dict[str | None, list[bench.Run]] = {v: [] for v in variants}
        for i in range(a.repeat):
            for off in variants[i % len(variants) :] + variants[: i % len(variants)]:
                log = logs / f"{spec.name}-{off or 'on'}-{i}.log"
                runs[off].append(merge_once(recipe, out, log, off, a.timeout))
        for trick in tricks:
            row = {
                "trick": trick,
                "method": spec.name,
                "set": a.set_name,
                "runs": {
                    "on": [asdict(r) for r in runs[None]],
                    "off": [asdict(r) for r in runs[trick]],
                },
            }
            rows.append(row)
            print(table([row]).splitlines()[-1], flush=True)
    print()
    print(table(rows))
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps({"argv": sys.argv, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
