"""LoRA extraction benchmark: randomized against full SVD, and against the I/O floor, on ``med``.

    python benchmarks/extract_lora.py --data bench-data/med --layers 1 --ranks 16 64 256

What it runs, in one invocation:

1. The floor (``../shared/bench/floor.py OUT base ft1``: read both models once, write one
   bf16 model), as its own process, to warm the page cache and as the I/O reference.
2. ``meldkit extract-lora --base base --model ft1`` as its own process for each rank with
   ``--svd randomized``, and once with ``--svd full`` (the baseline: the full SVD's cost does
   not depend on the rank kept) at the largest rank. Only the linear layers of the first
   ``--layers`` decoder layers are decomposed (``--exclude`` the rest); embeddings, head and
   norms are saved at full rank in every run, so every run reads and writes those in full.
   Wall time and peak RSS (``os.wait4``) per process.
3. In this process, per decomposed module: the full SVD once (its time, and the optimal
   relative error at each rank from its spectrum) and the randomized factorisation at each
   rank (its time and its exact error), summarised as mean and worst error per rank, and
   what ``--svd auto`` picks for the module (``randomized`` when its accuracy check passes,
   else ``full``).

``med``'s fine-tunes are base + i.i.d. noise: a flat spectrum, the worst case for a
randomized SVD (no decay to exploit) and for ``--svd auto`` (it falls back to the full SVD). A
real fine-tune's delta decays, which the tests cover (``tests/lora_extract/test_svd.py``).

Results (2026-12-02, ``--layers 1 --ranks 16 64 256``, on the shared 2-core machine under a
load average of 11-18 from other sessions: absolute times are several times an idle machine's
and vary from run to run; compare ratios within a run):

    run                                  wall s  x floor  x full  peak RSS  mean err   worst
    floor (read both, write one)           46.0     1.00    0.27    2.46G
    extract rank 16 randomized             39.5     0.86    0.23    0.41G    0.9795  0.9891
    extract rank 64 randomized             63.1     1.37    0.37    0.42G    0.9199  0.9569
    extract rank 256 randomized            69.8     1.52    0.41    0.44G    0.6846  0.8321
    extract rank 256 full                 171.2     3.72    1.00    0.45G    0.6702  0.8126

    per module (7 decomposed), in-process SVD only: full SVD total 534.3 s
     rank  rand s  x full  mean err rand/full  worst rand/full
       16    11.4   0.021    0.9794/0.9759   0.9891/0.9869
       64    46.9   0.088    0.9199/0.9090   0.9570/0.9494
      256   100.9   0.189    0.6847/0.6702   0.8323/0.8126

(The errors are near 1 because med's deltas are noise: rank 16 of a 1536-wide noise matrix
keeps about 4% of its energy, for any method.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# ../shared beside the main checkout (/work/main), or beside the worktrees' folder (/work/wt/x)
FLOOR = (
    next(
        (p for p in (REPO.parent / "shared", REPO.parents[1] / "shared") if (p / "bench").is_dir()),
        REPO.parent / "shared",
    )
    / "bench"
    / "floor.py"
)


def _timed(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(
            f"failed: {' '.join(cmd)}\n{proc.stderr.read().decode() if proc.stderr else ''}"
        )
    return wall, usage.ru_maxrss * 1024


def _exclude(layers: int, total: int) -> list[str]:
    later = "|".join(str(i) for i in range(layers, total))
    return ["--exclude", rf"layers\.({later})\.(self_attn|mlp)\."] if later else []


def _end_to_end(args: argparse.Namespace, scratch: Path, total_layers: int) -> list[dict]:
    base, model = args.data / "base", args.data / args.model
    rows = []
    wall, rss = _timed([sys.executable, str(FLOOR), str(scratch / "floor"), str(base), str(model)])
    rows.append({"run": "floor (read both, write one)", "wall": wall, "rss": rss})
    runs = [(r, "randomized") for r in args.ranks] + [(max(args.ranks), "full")]
    for rank, svd in runs:
        out = scratch / f"lora-{rank}-{svd}"
        cmd = [sys.executable, "-m", "meldkit", "extract-lora", "--base", str(base), "--model",
               str(model), str(out), "--rank", str(rank), "--svd", svd, "--quiet",
               *_exclude(args.layers, total_layers)]  # fmt: skip
        wall, rss = _timed(cmd)
        summary = json.loads((out / "extraction_report.json").read_text())["summary"]
        rows.append({"run": f"extract rank {rank} {svd}", "wall": wall, "rss": rss, **summary})
        shutil.rmtree(out)
    shutil.rmtree(scratch / "floor", ignore_errors=True)
    return rows


def _per_module(args: argparse.Namespace, total_layers: int) -> list[dict]:
    import torch

    from meldkit.extract_lora.svd import low_rank_factors
    from meldkit.io.index import open_index
    from meldkit.io.reader import TensorReader

    b_idx, m_idx = open_index(args.data / "base"), open_index(args.data / args.model)
    names = [n for n in m_idx.tensors if len(m_idx.tensors[n].shape) == 2 and ".layers." in n]
    names = [n for n in names if int(n.split(".layers.")[1].split(".")[0]) < args.layers]
    rows = []
    with TensorReader() as reader:
        for name in names:
            delta = (
                reader.read(m_idx.tensors[name]).float() - reader.read(b_idx.tensors[name]).float()
            )
            total = float(delta.double().square().sum())
            t = time.perf_counter()
            s = torch.linalg.svdvals(delta)  # the full SVD's cost, its spectrum for the optimum
            row: dict = {
                "module": name,
                "shape": list(delta.shape),
                "full_s": time.perf_counter() - t,
            }
            tail = total - torch.cumsum(s.double().square(), 0)
            for rank in args.ranks:
                t = time.perf_counter()
                f = low_rank_factors(delta, name=name, max_rank=rank, energy=None, svd="randomized")
                row[f"rand_s_{rank}"] = time.perf_counter() - t
                row[f"rand_err_{rank}"] = (max(1 - f.energy, 0.0)) ** 0.5
                row[f"full_err_{rank}"] = max(float(tail[rank - 1]) / total, 0.0) ** 0.5
            rows.append(row)
    return rows


def _print(e2e: list[dict], modules: list[dict], ranks: list[int]) -> None:
    floor = e2e[0]["wall"]
    full = next(r["wall"] for r in e2e if r["run"].endswith("full"))
    print(
        f"{'run':34} {'wall s':>8} {'x floor':>8} {'x full':>7} {'peak RSS':>9} {'mean err':>9} {'worst':>7}"
    )
    for r in e2e:
        err = f"{r['mean_error']:9.4f} {r['worst_error']:7.4f}" if "mean_error" in r else ""
        print(f"{r['run']:34} {r['wall']:8.1f} {r['wall'] / floor:8.2f} {r['wall'] / full:7.2f} "
              f"{r['rss'] / 2**30:7.2f}G {err}")  # fmt: skip
    n = len(modules)
    full_s = sum(m["full_s"] for m in modules)
    print(f"\nper module ({n} decomposed), in-process SVD only: full SVD total {full_s:.1f} s")
    print(
        f"{'rank':>5} {'rand s':>7} {'x full':>7} {'mean err rand/full':>19} {'worst rand/full':>16}"
    )
    for r in ranks:
        rs = sum(m[f"rand_s_{r}"] for m in modules)
        re_ = [m[f"rand_err_{r}"] for m in modules]
        fe = [m[f"full_err_{r}"] for m in modules]
        print(f"{r:5} {rs:7.1f} {rs / full_s:7.3f} {sum(re_) / n:9.4f}/{sum(fe) / n:.4f} "
              f"{max(re_):8.4f}/{max(fe):.4f}")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=Path("bench-data/med"))
    p.add_argument("--model", default="ft1")
    p.add_argument(
        "--layers", type=int, default=1, help="decoder layers whose linears are decomposed"
    )
    p.add_argument("--ranks", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--json", type=Path, help="save the raw rows here")
    args = p.parse_args()
    total_layers = json.loads((args.data / "base" / "config.json").read_text())["num_hidden_layers"]
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_SCRATCH")) as tmp:
        e2e = _end_to_end(args, Path(tmp), total_layers)
    modules = _per_module(args, total_layers)
    _print(e2e, modules, args.ranks)
    if args.json:
        args.json.write_text(json.dumps({"end_to_end": e2e, "modules": modules}, indent=1))


if __name__ == "__main__":
    main()
