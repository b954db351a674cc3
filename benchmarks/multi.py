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

Result, 2026-12-02, ``python benchmarks/multi.py --set small --repeat 2`` on the shared 2-core
machine (load average about 15, so the wall times are rough): written 34-36 s, 555 MiB, 934.6
MB written; streamed 28-30 s, 600 MiB, 311.5 MB written; final shards byte-identical. Ratios
streamed / written: wall 0.84, peak RSS 1.08, bytes written 0.33. Streaming cannot go below
the largest stage's own working set (the final slerp holds two whole tensors in float32 either
way); it adds the earlier stage's merge of the next tensor, which runs while the later stage
computes the current one (its read-ahead), hence the slightly higher peak.
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
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.glob("*.safetensors"))
    }


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
