"""Peak RSS of ``meldkit moe``: an 8-expert build against a 2-expert build of `med` experts.

The experts are bench-data/med's base and fine-tunes (Llama, 12 layers, hidden 1536,
intermediate 4096, bfloat16, 755 MB each), used in turn to fill 2 or 8 expert slots, with
``gate_mode: random`` so that only the streaming build is measured (no router model run).
Each build is one child process (``python -m meldkit moe``), its peak RSS the kernel's
``ru_maxrss`` from ``os.wait4``, as ``benchmarks/run.py`` measures merges. A build writes one
expert projection at a time, so its memory should not grow with the expert count although the
output does (1.2 GB against 3.9 GB).

Run (about 1-2 minutes, ~5 GB written to the scratch folder, removed afterwards)::

    PYTHONPATH=src python benchmarks/moe.py --scratch /work/scratch/moe/bench

Measured 2026-12-02 on the shared 2-core machine (other jobs running), with that command:

    experts     output     wall   peak RSS
          2     1.24GB    26.4s      444MB
          8     3.96GB    68.1s      420MB
    ratio 8/2: peak RSS 0.95x, output 3.18x

With ``--noise 0.01`` (every expert through the float32 path: read, noise, cast), the same
command plus that flag, measured while other tests ran on the machine:

    experts     output     wall   peak RSS
          2     1.24GB   101.7s      534MB
          8     3.96GB   209.9s      599MB
    ratio 8/2: peak RSS 1.12x, output 3.18x

(an 8-expert noisy build alone, ``--experts 8``: 372 MB). Before the float32 path worked in
place and trimmed the heap, it peaked at 447 MB against 775 MB (1.73x): glibc kept the freed
float32 buffers; and before plain experts skipped the float32 round trip, 396 against 546 MB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
MED = REPO / "bench-data" / "med"


def _recipe(folder: Path, n_experts: int, noise: float | None) -> Path:
    sources = [MED / "ft1", MED / "ft2", MED / "ft3", MED / "base"]
    recipe = {
        "base_model": str(MED / "base"),
        "gate_mode": "random",
        "dtype": "bfloat16",
        "experts": [
            {"source_model": str(sources[i % len(sources)]), "noise_scale": noise}
            for i in range(n_experts)
        ],
    }
    path = folder / f"moe{n_experts}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def _build(recipe: Path, out: Path, log: Path) -> tuple[float, int, int]:
    """Wall seconds, peak RSS bytes and output bytes of one build in a child process."""
    argv = [sys.executable, "-m", "meldkit", "moe", str(recipe), str(out), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    with open(log, "wb") as fh:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"build failed ({proc.returncode}); see {log}")
    size = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    return wall, usage.ru_maxrss * 1024, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scratch", type=Path, required=True, help="folder for recipes and outputs"
    )
    parser.add_argument("--experts", type=int, nargs="+", default=[2, 8])
    parser.add_argument(
        "--noise", type=float, default=None, help="noise_scale of every expert (float32 path)"
    )
    args = parser.parse_args()
    if not (MED / "base" / "config.json").is_file():
        raise SystemExit(f"{MED} is missing: make it with benchmarks/run.py first")
    args.scratch.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.experts:
        out = args.scratch / f"out{n}"
        shutil.rmtree(out, ignore_errors=True)
        wall, rss, size = _build(
            _recipe(args.scratch, n, args.noise), out, args.scratch / f"moe{n}.log"
        )
        shutil.rmtree(out, ignore_errors=True)
        rows.append((n, size, wall, rss))
    print(f"{'experts':>7}  {'output':>9}  {'wall':>7}  {'peak RSS':>9}")
    for n, size, wall, rss in rows:
        print(f"{n:>7}  {size / 1e9:>7.2f}GB  {wall:>6.1f}s  {rss / 1e6:>7.0f}MB")
    (n0, s0, _, r0), (n1, s1, _, r1) = rows[0], rows[-1]
    print(f"ratio {n1}/{n0}: peak RSS {r1 / r0:.2f}x, output {s1 / s0:.2f}x")


if __name__ == "__main__":
    main()
