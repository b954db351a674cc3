"""``meldkit multi``: written intermediates against ``--no-intermediates``, side by side.

A three-stage chain on a synthetic set (default ``small``: a base and three fine-tunes from
``bench-data/``): ``ab = linear(ft1, ft2)``, ``c = task_arithmetic(base, ft3)``, then the
final ``slerp(ab, c)``. Each mode runs as its own process (``python -m meldkit multi RECIPE
--out OUT -I DIR --quiet``, with ``--no-intermediates`` for the streamed mode), alternating,
``--repeat`` times after one untimed warm-up run, with fresh output folders and a ``sync`` outside the timed region. For each
run: wall time, peak RSS (``os.wait4``'s ``ru_maxrss`` of that child) and the bytes of every
file left under the output and intermediate folders (what the run wrote). The final shards of
both modes are compared byte for byte (sha256). Prints one line per run, then the ratios
(streamed / written).

    python benchmarks/multi.py [--set small] [--repeat 2] [--work /tmp/meldkit-multi-bench]

Results, 2026-12-02, on the shared 2-core machine (load average 15-18, so wall times are
rough; peak RSS does not depend on the load). Before pacing (``python benchmarks/multi.py --set
small --repeat 2``): written 555 MiB, streamed 600 MiB (1.08x): the later stage's reader asked
for the next tensors while the final slerp computed the largest (embeddings, LM head), and each
of those reads was a merge with its own inputs. With :mod:`meldkit.multi.pacing` (a streamed
merge waits while a large output tensor's streamed inputs are alive), medians, MiB / s / MB::

    set    mode      peak RSS   wall   written
    small  written      560     21.4    934.6
    small  streamed     532     18.2    311.5    (0.95x RSS, 0.85x wall, 0.33x bytes)
    med    written      684     47.6   2373.9
    med    streamed     634     38.2    791.3    (0.93x RSS, 0.80x wall, 0.33x bytes)

from ``python benchmarks/multi.py --set small --repeat 2`` and ``python benchmarks/multi.py
--set med --repeat 1``. The final shards are byte-identical in every run.
The streamed run's peak is the final slerp of the LM head or embeddings alone, computed on
inputs merged just before it; the written run's is the same computation plus the mapped pages
of the next pieces its reader holds ahead (cheap to read ahead from a file, so nothing holds
them back). Both stay above the final stage's own working set (two whole vocabulary tensors).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def chain_recipe(models: Path) -> str:
    return (
        "name: ab\nmerge_method: linear\nmodels:\n"
        f"  - model: {models / 'ft1'}\n    parameters: {{weight: 0.5}}\n"
        f"  - model: {models / 'ft2'}\n    parameters: {{weight: 0.5}}\n"
        "---\nname: c\nmerge_method: task_arithmetic\n"
        f"base_model: {models / 'base'}\nmodels:\n"
        f"  - model: {models / 'ft3'}\n    parameters: {{weight: 0.7}}\n"
        "---\nmerge_method: slerp\nbase_model: ab\nmodels: [{model: ab}, {model: c}]\n"
        "parameters: {t: 0.3}\n"
    )


def folder_bytes(*folders: Path) -> int:
    return sum(p.stat().st_size for f in folders if f.exists() for p in f.rglob("*") if p.is_file())


def shard_hashes(folder: Path) -> dict[str, str]:
    """sha256 of each shard, read in 8 MiB chunks. Reading a shard whole would raise this
    process's peak RSS to the shard's size, and a child started by vfork reports the parent's
    peak as its own ``ru_maxrss`` (on `med`, 772 MiB for both modes, whatever they used)."""
    hashes = {}
    for path in sorted(folder.glob("*.safetensors")):
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(8 << 20):
                digest.update(chunk)
        hashes[path.name] = digest.hexdigest()
    return hashes


def run_once(recipe: Path, work: Path, streamed: bool) -> dict[str, object]:
    out, inter = work / "out", work / "inter"
    for folder in (out, inter):
        shutil.rmtree(folder, ignore_errors=True)
    os.sync()
    cmd = [sys.executable, "-m", "meldkit", "multi", str(recipe), "--out", str(out)]
    cmd += ["-I", str(inter), "--quiet"] + (["--no-intermediates"] if streamed else [])
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return {
        "wall": wall,
        "rss": usage.ru_maxrss * 1024,  # KiB on Linux
        "written": folder_bytes(out, inter),
        "hashes": shard_hashes(out),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default="small", help="bench-data set (default: small)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--data", default=str(ROOT / "bench-data"))
    parser.add_argument("--work", default="/tmp/meldkit-multi-bench")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    recipe = work / "chain.yaml"
    recipe.write_text(chain_recipe(Path(args.data) / args.set))
    # Untimed: numba compiles (and caches) the kernels the methods need on a first run.
    run_once(recipe, work / "warm-up", streamed=False)
    results: dict[str, list[dict[str, object]]] = {"written": [], "streamed": []}
    for i in range(args.repeat):
        for mode in ("written", "streamed"):
            r = run_once(recipe, work / mode, mode == "streamed")
            results[mode].append(r)
            print(
                f"{mode:8s} run {i + 1}: wall {r['wall']:.2f} s, peak RSS "
                f"{int(r['rss']) / 2**20:.0f} MiB, written {int(r['written']) / 1e6:.1f} MB"
            )
    identical = all(
        r["hashes"] == results["written"][0]["hashes"] for rs in results.values() for r in rs
    )
    print(f"final shards byte-identical across modes and runs: {identical}")

    def med(mode: str, key: str) -> float:
        return statistics.median(float(r[key]) for r in results[mode])  # type: ignore[arg-type]

    for key, what in (("wall", "wall time"), ("rss", "peak RSS"), ("written", "bytes written")):
        ratio = med("streamed", key) / med("written", key)
        print(f"streamed / written, {what} (median): {ratio:.2f}")
    if not identical:
        raise SystemExit("the final weights differ")


if __name__ == "__main__":
    main()
