"""Micro-benchmarks behind the hotspots in docs/performance.md (one process, no disk).

    python benchmarks/micro.py [--numel 49152000] [--row 4096]

Each line times one way of doing a step the engine or a method does per tensor, on a tensor of
``--numel`` elements (default: med's largest, the 32000x1536 embedding) and, for DELLA's per-row
ranks and arcee_fusion's per-row KL, rows of ``--row`` elements. Best of ``--repeat`` runs,
seconds. Saves benchmarks/results/micro.json.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def sampled_kth(d: torch.Tensor, k: int, sample: int = 1 << 18) -> torch.Tensor:
    """Exact k-th smallest (1-based) of a flat tensor: bracket it with a random sample, count
    what lies below the bracket, and select inside the (small) bracket only."""
    n = d.numel()
    g = torch.Generator().manual_seed(0)
    s = d[torch.randint(0, n, (sample,), generator=g)].sort().values
    q = int(k / n * sample)
    margin = int(4 * sample**0.5) + 1
    lo, hi = s[max(0, q - margin)], s[min(sample - 1, q + margin)]
    below = int(torch.count_nonzero(d < lo))
    band = d[(d >= lo) & (d <= hi)]
    if not (0 < k - below <= band.numel()):  # the bracket missed (rare): exact fallback
        return torch.kthvalue(d, k).values
    return torch.kthvalue(band, k - below).values


def kernels_section(
    xb: torch.Tensor, yb: torch.Tensor, length: int, row: Callable[..., None]
) -> None:
    """The numba kernels of the DARE/DELLA draws, DELLA's masks and arcee_fusion's KL, one
    thread, on the same bf16 pair viewed as rows of ``length`` (skipped without numba)."""
    import numpy as np

    from meldkit.kernels import runner
    from meldkit.methods import arcee_fusion

    primitives, tv = runner.load("primitives"), runner.load("task_vectors_numba")
    pair = runner.load("arcee_fusion_numba")
    if primitives is None or tv is None or pair is None:
        return
    rows = xb.numel() // length
    x2, b2 = yb[: rows * length].reshape(rows, length), xb[: rows * length].reshape(rows, length)
    xs, bs = runner.stored_arrays([x2, b2])
    print(f"-- numba kernels, one thread, rows of {length}")
    bits = np.zeros((rows * length + 7) // 8, dtype=np.uint8)
    sums = np.empty((rows, 2))
    step = np.float32(0.2 / (length - 1))
    draws = np.empty(rows * length, dtype=np.float32)
    row(
        "uniform_range (the DARE/DELLA draws: two 32-bit hash rounds each)",
        lambda: primitives.uniform_range(np.uint64(1), np.uint64(2), 0, draws),
    )
    row(
        "della_bits (masks and L1 norms, density 0.5, epsilon 0.1)",
        lambda: tv.della_bits(
            xs,
            bs,
            0,
            -(-rows // 8),
            np.uint64(1),
            np.uint64(2),
            length,
            np.float32(0.4),
            step,
            bits,
            sums,
        ),
    )
    kl = np.empty(rows)
    no_sample = (
        np.zeros(rows + 1, dtype=np.int64),
        np.uint64(0),
        np.uint64(0),
        False,
        np.empty(0, dtype=np.float32),
    )
    row(
        "arcee row_kl kernel (float64 KL)",
        lambda: pair.row_kl(xs, bs, 0, rows, length, arcee_fusion.KL_EPS, kl, *no_sample),
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def torch_f32() -> torch.Tensor:
        p = torch.softmax(x2.float(), -1).add_(1e-8)
        q = torch.softmax(b2.float(), -1).add_(1e-8)
        return torch.div(p, q, out=q).log_().mul_(p).sum(-1)

    row("the same KL in torch float32 (MergeKit's formula)", torch_f32)
    torch.set_num_threads(threads)
    exact = arcee_fusion.row_kl(x2, b2).reshape(-1).numpy()
    for name, got in [("kernel", kl), ("torch float32", torch_f32().double().numpy())]:
        err = np.abs(got - exact) / np.abs(exact)
        print(f"          {name}: median relative error {np.median(err):.1e} against torch float64")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--numel", type=int, default=32000 * 1536)
    ap.add_argument("--row", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (meldkit uses one per spare core: 1 on a 2-core machine)",
    )
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "micro.json"
    )
    a = ap.parse_args()
    n, r = a.numel, a.repeat
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    xb = (torch.randn(n) * 0.02).to(torch.bfloat16)
    yb = (xb.float() + torch.randn(n) * 0.001).to(torch.bfloat16)
    xf = xb.float()
    out = torch.empty_like(xf)
    d = (yb.float() - xf).abs_()
    k = n // 2
    rows = torch.randn(max(1, n // a.row), a.row) * 0.001
    rows_abs = rows.abs()
    results: dict[str, float] = {}

    def row(name: str, fn: Callable[[], object], rep: int = r) -> None:
        results[name] = best(fn, rep)
        print(f"{results[name]:8.3f} s  {name}", flush=True)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, numel {n:,}, row {a.row}")
    print("-- reading: non-finite check on one bf16 input")
    row("torch.isfinite(x).all()  (bf16, bool mask)", lambda: bool(torch.isfinite(xb).all()))
    row("torch.isfinite(x.sum())  (bf16)", lambda: bool(torch.isfinite(xb.sum())))
    row("torch.aminmax(x)         (bf16, NaN/Inf propagate)", lambda: torch.aminmax(xb))
    row("preadv-equivalent memcpy (bf16 clone)", lambda: xb.clone())
    print("-- casts and fresh allocations (first touch of new pages)")
    row("x.float()                (new fp32 tensor)", lambda: xb.float())
    row("out.copy_(x)             (into a reused fp32 buffer)", lambda: out.copy_(xb))
    row("a - b                    (new tensor)", lambda: xf - xf)
    row("torch.sub(a, b, out=)    (reused buffer)", lambda: torch.sub(xf, xf, out=out))
    row("a * (a > 0)              (two new tensors)", lambda: xf * (xf > 0))
    row(
        "torch.where(p, v>0, v<0) (three new bool tensors)",
        lambda: torch.where(xf >= 0, xf > 0, xf < 0),
    )
    print("-- TIES/breadcrumbs: k-th largest |delta| (k = N/2)")
    row("torch.kthvalue(|d|, k)", lambda: torch.kthvalue(d, k), 2)
    row("sampled exact select (same value)", lambda: sampled_kth(d, k), 2)
    assert float(sampled_kth(d, k)) == float(torch.kthvalue(d, k).values)
    mask = d > 0
    row("int(mask.sum())          (bool -> int64 reduction)", lambda: int(mask.sum()))
    row("torch.count_nonzero(mask)", lambda: int(torch.count_nonzero(mask)))
    print("-- PCB: the clamp's two bounds of |delta| (ranks N*1e-4 from each end)")
    from meldkit.methods.pcb import _rank, tail_pair

    k_low, k_high = _rank(n, 1e-4), _rank(n, 1 - 1e-4, offset=-1)  # pcb's default clamp

    def two_topk() -> tuple[torch.Tensor, torch.Tensor]:
        low = torch.topk(d, k_low, largest=False, sorted=False).values.max()
        return low, torch.topk(d, n - k_high + 1, sorted=False).values.min()

    row("two topk passes          (before)", two_topk)
    row(
        "tail_pair: one sampled cut of both tails (same values)",
        lambda: tail_pair(d, k_low, k_high),
    )
    assert tuple(map(float, tail_pair(d, k_low, k_high))) == tuple(map(float, two_topk()))
    print("-- DARE/DELLA rescale: L1 norm of one delta")
    blocks = n // 16384
    head = d[: blocks * 16384].reshape(blocks, 16384)
    row(
        "abs + (rows,16384).sum(dim=1, dtype=f64) (current _blocked_sum)",
        lambda: (
            xf.abs()[: blocks * 16384].reshape(blocks, 16384).sum(dim=1, dtype=torch.float64).sum()
        ),
    )
    row(
        "vector_norm(rows, 1, dim=1, dtype=f64)   (same fp64 accumulation, no abs copy)",
        lambda: torch.linalg.vector_norm(head, 1, dim=1, dtype=torch.float64).sum(),
    )
    row(
        "vector_norm(rows, 1, dim=1) fp32, rows summed in f64",
        lambda: torch.linalg.vector_norm(head, 1, dim=1).double().sum(),
    )
    print(f"-- DELLA: per-row magnitude ranks, rows of {a.row}")
    row(
        "argsort(|d|, dim=1) + scatter_ (current)",
        lambda: torch.empty_like(rows_abs).scatter_(
            1,
            torch.argsort(rows_abs, dim=1),
            torch.arange(a.row, dtype=rows.dtype).expand_as(rows_abs).contiguous(),
        ),
        2,
    )
    row(
        "argsort(argsort(|d|))    (ranks, no scatter)",
        lambda: torch.argsort(torch.argsort(rows_abs, dim=1), dim=1),
        2,
    )
    row("sort(|d|, dim=1)         (values only)", lambda: torch.sort(rows_abs, dim=1), 2)
    row("argsort(|d|, dim=1, stable=True)", lambda: torch.argsort(rows_abs, dim=1, stable=True), 2)
    row(
        "sort(|d| as int32 keys, stable=True) (same order for |d| >= 0)",
        lambda: torch.sort(rows_abs.view(torch.int32), dim=1, stable=True),
        2,
    )
    print("-- random draws (DARE/DELLA), N uniforms")
    g = torch.Generator().manual_seed(0)
    row("torch.rand(N, generator=g)  (mt19937, 1 thread)", lambda: torch.rand(n, generator=g))
    kernels_section(xb, yb, a.row, row)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(
        json.dumps(
            {"numel": n, "row": a.row, "threads": torch.get_num_threads(), "seconds": results},
            indent=2,
        )
        + "\n"
    )
    print(f"saved {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
