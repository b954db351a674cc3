"""Cost of the data-free methods beyond MergeKit, per tensor shape and on the whole `med` set.

    python benchmarks/spectral.py                       # per-shape table on the CPU (+ GPU)
    python benchmarks/spectral.py --shapes 4096x11008 32000x4096 --repeat 1
    python benchmarks/spectral.py --med --methods tsv iso_c   # also whole `med` merges
    python benchmarks/spectral.py --shapes --med --methods magmax   # whole `med` merges only

The I/O floor alone is not the yardstick for these methods: each one's time is set next to
the floor plus the factorizations it needs, computed with torch in the same process on the
same matrices, and the ratio ``method / (floor + factorizations)`` is the figure (target at
most 1.5x). Per shape, with a base and ``--tasks`` fine-tunes (float32 random task vectors,
stored as bf16 in a safetensors file so that reading is real):

* **floor**: what ``../shared/bench/floor.py`` does per tensor: read the ``T + 1`` tensors,
  a weighted sum in float32, cast to bf16;
* **method**: read the same tensors, upcast, the method's merge function (from the registry,
  by name, default parameters, ``weight: 1``), cast to bf16;
* **factorizations** (``svd`` column): ``torch.linalg.svd(full_matrices=False)`` of what the
  method factorises: TSV-M the ``T`` task vectors and its two polar factors (``out x Tk`` and
  ``in x Tk``); Iso-C the summed task vector; Iso-CTS that, the ``T`` residuals and its two
  polar factors; WUDI the
  Gram ``sum_t w_t tau_t^T tau_t`` and its ``eigh`` (the pseudo-inverse of the closed form).
  PCB, MagMax and Consensus are element-wise: their yardstick is the floor. ``lowrank``:
  ``torch.svd_lowrank(q=k, niter=2)`` in place of TSV-M's per-task SVDs;
* **own algebra** (``algebra`` column), for the two methods whose work is not a factorization:
  WUDI's Adam form, the products it cannot avoid (the ``T`` Gram products, the ``T`` residual
  products and one ``(out x in) @ (in x in)`` product per step, at its default ``steps``); PCB, its
  three selections per task (the two clamp bounds and the top-``ratio`` threshold) by
  ``torch.kthvalue`` over the whole row. The ratio ``method / (floor + algebra)`` then says
  what the implementation adds to the arithmetic the algorithm needs.

With every `med` shape timed, the per-shape times are also summed over `med`'s matrices
(``med_sums``): the whole-model yardstick, floor plus factorizations, for a whole `med` merge
timed by ``benchmarks/run.py``. ``--sums JSON`` prints them again from a saved result.

With ``--med``, each method also merges the whole ``bench-data/med`` set (base + 3
fine-tunes, bf16) as ``python -m meldkit merge``, next to ``floor.py`` over the same models,
one process each, alternately. Methods not registered yet are skipped and listed. Results:
a table on stdout and JSON in ``benchmarks/results/spectral-<time>.json``. GPU timings
(method and factorizations, inputs already on the device) are added when
``torch.cuda.is_available()``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# ../shared beside the checkout (a worktree under wt/ has it two levels up), else the copy.
_FLOORS = [p / "shared" / "bench" / "floor.py" for p in (REPO.parent, REPO.parent.parent)]
FLOOR_CMD = next(
    ([sys.executable, str(p)] for p in _FLOORS if p.is_file()),
    [sys.executable, str(HERE / "reference.py"), "floor"],
)
NEW_METHODS = ("tsv", "iso_c", "iso_cts", "wudi", "pcb", "magmax", "consensus")
# med's matrices (hidden 1536, 6 KV heads of 64, MLP 4096, vocabulary 32000) and a 7B's.
MED_SHAPES = ("1536x1536", "384x1536", "4096x1536", "1536x4096", "32000x1536")
# How many matrices of each shape `med` has (12 layers; embeddings and LM head untied).
MED_COUNTS = {"1536x1536": 24, "384x1536": 24, "4096x1536": 24, "1536x4096": 12, "32000x1536": 2}
DEFAULT_SHAPES = (*MED_SHAPES, "1024x4096", "4096x4096")


def _shape(text: str) -> tuple[int, int]:
    rows, cols = text.lower().split("x")
    return int(rows), int(cols)


def _best(fn: Callable[[], Any], repeat: int, sync: bool = False) -> float:
    """The fastest of ``repeat`` runs of ``fn``, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return best


def _write_inputs(folder: Path, shape: tuple[int, int], tasks: int) -> Path:
    """base and ``tasks`` fine-tunes of one shape, bf16, in one safetensors file; each task
    vector is a rank-16 part plus noise, of a different norm per task."""
    gen = torch.Generator().manual_seed(shape[0] * 7919 + shape[1])
    base = torch.randn(shape, generator=gen) * 0.02
    tensors = {"base": base.to(torch.bfloat16)}
    for t in range(tasks):
        low = torch.randn(shape[0], 16, generator=gen) @ torch.randn(16, shape[1], generator=gen)
        tau = (low * 1e-3 + torch.randn(shape, generator=gen) * 2e-4) * (1.0 + t)
        tensors[f"ft{t}"] = (base + tau).to(torch.bfloat16)
    path = folder / f"{shape[0]}x{shape[1]}.safetensors"
    save_file(tensors, str(path))
    return path


def _read(path: Path, names: Sequence[str]) -> list[torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return [f.get_tensor(n) for n in names]


def _floor(path: Path, names: Sequence[str]) -> torch.Tensor:
    acc: torch.Tensor | None = None
    w = 1.0 / len(names)
    for x in _read(path, names):
        acc = x.float() * w if acc is None else acc.add_(x.float(), alpha=w)
    assert acc is not None
    return acc.to(torch.bfloat16)


def _params(spec: Any, n_inputs: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The method's defaults, ``weight: 1`` per fine-tune; base at index 0."""
    shared = {p.name: p.default for p in spec.params if p.scope == "shared"}
    per_input: list[dict[str, Any]] = []
    for i in range(n_inputs):
        values = {}
        for p in spec.params:
            if p.scope == "per_input" or (p.scope == "per_non_base" and i != 0):
                values[p.name] = 1.0 if p.name == "weight" else p.default
        per_input.append(values)
    return shared, per_input


def _svd(m: torch.Tensor) -> Any:
    return torch.linalg.svd(m, full_matrices=False)


def _factorizations(method: str, taus: list[torch.Tensor], lowrank: bool) -> None:
    """The factorizations ``method`` needs on these task vectors (see the docstring)."""
    T, (rows, cols) = len(taus), taus[0].shape
    r = min(rows, cols)
    k = max(1, r // T)
    if method == "tsv":
        us, vs = [], []
        for tau in taus:
            if lowrank:
                u, _, v = torch.svd_lowrank(tau, q=min(k + 10, r), niter=2)
            else:
                u, _, vh = _svd(tau)
                v = vh.mH
            us.append(u[:, :k])
            vs.append(v[:, :k])
        _svd(torch.cat(us, dim=1))  # polar factor of U (rows x Tk)
        _svd(torch.cat(vs, dim=1))  # and of V (cols x Tk)
    elif method in ("iso_c", "iso_cts"):
        total = torch.stack(taus).sum(0)
        u, _, vh = _svd(total)
        if method == "iso_cts":
            k = int(0.8 * r)
            common = u[:, :k]  # (rows, k)
            us, vs = [common], [vh[:k].mH]
            for tau in taus:
                ut, _, vht = _svd(tau - common @ (common.mH @ tau))
                us.append(ut[:, : (r - k) // T])
                vs.append(vht[: (r - k) // T].mH)
            _svd(torch.cat(us, dim=1))  # polar factor of [U_c U_1 .. U_T] (rows x r)
            _svd(torch.cat(vs, dim=1))  # and of the Vs (cols x r)
    elif method == "wudi":
        gram = sum((tau.mH @ tau) / float(tau.pow(2).sum()) for tau in taus)
        torch.linalg.eigh(gram)


# The methods whose unavoidable arithmetic is not a factorization (see the docstring).
OWN_ALGEBRA = ("wudi", "pcb")


def _own_algebra(method: str, taus: list[torch.Tensor], shared: dict[str, Any]) -> None:
    """The arithmetic ``method``'s algorithm cannot avoid at its defaults ``shared`` (see the
    docstring)."""
    if method == "wudi":
        total = torch.stack(taus).sum(0)
        gram = torch.zeros(total.shape[1], total.shape[1])
        residual = torch.zeros_like(total)
        for tau in taus:
            g_t = tau.mH @ tau
            gram.add_(g_t)
            residual.add_((tau - total) @ g_t)
        step = torch.empty_like(total)
        for _ in range(int(shared["steps"])):
            torch.addmm(residual, total, gram, beta=-1, out=step)
    elif method == "pcb":
        from meldkit.methods.pcb import _rank  # the ranks pcb_weights selects

        n, clamp, ratio = taus[0].numel(), shared["clamp"], shared["ratio"]
        for tau in taus:
            row = tau.reshape(-1).abs()
            for k in (_rank(n, clamp), _rank(n, 1 - clamp, offset=-1), _rank(n, 1 - ratio)):
                torch.kthvalue(row, k)


def _time_method(
    name: str, path: Path, names: list[str], taus: list[torch.Tensor], floor: float, repeat: int
) -> dict[str, Any]:
    """One row: the method on one shape, next to the floor and its factorizations."""
    from meldkit.methods.registry import MergeContext, get_method, load_merge_function

    spec = get_method(name)
    fn = load_merge_function(spec)
    shared, per_input = _params(spec, len(names))
    rows, cols = taus[0].shape
    # A vocabulary-sized matrix is an embedding (methods may have a rule of their own).
    tensor = "model.embed_tokens.weight" if rows == 32000 else "model.layers.0.mlp.up_proj.weight"
    ctx = MergeContext(tensor, 0, "cpu", "BF16")

    def merge(device: str = "cpu", inputs: list[torch.Tensor] | None = None) -> torch.Tensor:
        ins = inputs if inputs is not None else [x.float() for x in _read(path, names)]
        ctx.device = device
        return fn(ins, 0, shared, per_input, ctx).to(torch.bfloat16)

    merge()  # warm-up: imports, kernels
    method_s = _best(merge, repeat)
    svd_s = _best(lambda: _factorizations(name, taus, False), repeat)
    row: dict[str, Any] = {
        "method": name,
        "shape": f"{rows}x{cols}",
        "method_s": method_s,
        "floor_s": floor,
        "svd_s": svd_s,
        "ratio_svd": method_s / (floor + svd_s),
    }
    if name in OWN_ALGEBRA:
        algebra = _best(lambda: _own_algebra(name, taus, shared), repeat)
        row.update(algebra_s=algebra, ratio_algebra=method_s / (floor + algebra))
    if name == "tsv":
        low = _best(lambda: _factorizations(name, taus, True), repeat)
        row.update(lowrank_s=low, ratio_lowrank=method_s / (floor + low))
    if torch.cuda.is_available():
        base = taus[0].new_zeros(taus[0].shape).cuda()
        gt = [t.cuda() for t in taus]
        gx = [base, *(base + t for t in gt)]
        merge("cuda", gx)
        row["gpu_method_s"] = _best(lambda: merge("cuda", gx), repeat, sync=True)
        row["gpu_svd_s"] = _best(lambda: _factorizations(name, gt, False), repeat, sync=True)
    return row


def _time_shape(
    shape: tuple[int, int], methods: list[str], folder: Path, tasks: int, repeat: int
) -> list[dict[str, Any]]:
    path = _write_inputs(folder, shape, tasks)
    names = ["base", *(f"ft{t}" for t in range(tasks))]
    _floor(path, names)  # warm the page cache
    floor = _best(lambda: _floor(path, names), repeat)
    xs = [x.float() for x in _read(path, names)]
    taus = [x - xs[0] for x in xs[1:]]
    del xs
    rows = []
    for name in methods:
        row = _time_method(name, path, names, taus, floor, repeat)
        rows.append(row)
        print(_format_row(row), flush=True)
    path.unlink()
    return rows


def _format_row(row: dict[str, Any]) -> str:
    text = (
        f"{row['method']:<10} {row['shape']:>11} method {row['method_s']:8.3f} s  floor "
        f"{row['floor_s']:7.3f} s  svd {row['svd_s']:8.3f} s  ratio {row['ratio_svd']:5.2f}x"
    )
    if "algebra_s" in row:
        text += f"  (algebra {row['algebra_s']:.3f} s: {row['ratio_algebra']:.2f}x)"
    if "lowrank_s" in row:
        text += f"  (lowrank {row['lowrank_s']:.3f} s: {row['ratio_lowrank']:.2f}x)"
    if "gpu_method_s" in row:
        text += f"  gpu {row['gpu_method_s']:.4f} s, svd {row['gpu_svd_s']:.4f} s"
    return text


def _med_sums(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method with every `med` shape timed: the per-shape times summed over `med`'s
    matrices (its 25 norm vectors are negligible), so the whole-model yardstick is known:
    ``method_s`` next to ``floor_s + svd_s`` (and ``+ algebra_s``)."""
    sums = []
    for name in dict.fromkeys(r["method"] for r in rows):
        mine = {r["shape"]: r for r in rows if r["method"] == name and r["shape"] in MED_COUNTS}
        if len(mine) < len(MED_COUNTS):
            continue
        total = {
            key: sum(n * mine[shape].get(key, 0.0) for shape, n in MED_COUNTS.items())
            for key in ("method_s", "floor_s", "svd_s", "algebra_s")
        }
        total["ratio_svd"] = total["method_s"] / (total["floor_s"] + total["svd_s"])
        if name in OWN_ALGEBRA:
            total["ratio_algebra"] = total["method_s"] / (total["floor_s"] + total["algebra_s"])
        sums.append({"method": name, **total})
        print(
            f"{name:<10} med matrices: method {total['method_s']:7.1f} s  floor "
            f"{total['floor_s']:5.1f} s  svd {total['svd_s']:7.1f} s  ratio "
            f"{total['ratio_svd']:5.2f}x"
            + (f"  algebra {total['algebra_s']:.1f} s" if name in OWN_ALGEBRA else "")
        )
    return sums


def _med_recipe(method: str, med: Path, out: Path) -> Path:
    from meldkit.methods.registry import get_method

    own = "    parameters: {weight: 1.0}\n" if get_method(method).param("weight") else ""
    models = "".join(f"  - model: {med / f'ft{i}'}\n{own}" for i in (1, 2, 3))
    path = out / f"{method}.yaml"
    path.write_text(f"merge_method: {method}\nbase_model: {med / 'base'}\nmodels:\n{models}")
    return path


def _timed(cmd: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def _time_med(methods: list[str], med: Path, scratch: Path) -> list[dict[str, Any]]:
    models = [str(med / n) for n in ("base", "ft1", "ft2", "ft3")]
    out = scratch / "med-out"
    rows = []
    for name in methods:
        shutil.rmtree(out, ignore_errors=True)
        floor = _timed([*FLOOR_CMD, str(out), *models])
        shutil.rmtree(out, ignore_errors=True)
        os.sync()
        recipe = _med_recipe(name, med, scratch)
        wall = _timed([sys.executable, "-m", "meldkit", "merge", str(recipe), str(out), "--quiet"])
        shutil.rmtree(out, ignore_errors=True)
        row = {"method": name, "med_s": wall, "floor_s": floor, "ratio_floor": wall / floor}
        rows.append(row)
        print(f"{name:<10} med merge {wall:7.1f} s  floor {floor:6.1f} s  {wall / floor:5.2f}x")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", nargs="+", default=list(NEW_METHODS))
    ap.add_argument("--shapes", nargs="*", default=list(DEFAULT_SHAPES))
    ap.add_argument("--tasks", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--med", action="store_true", help="also merge the whole bench-data/med")
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/meldkit-spectral"))
    ap.add_argument("--sums", type=Path, default=None, help="print a saved result's med sums")
    args = ap.parse_args(argv)
    if args.sums:
        _med_sums(json.loads(args.sums.read_text())["shapes"])
        return 0
    from meldkit.errors import RecipeError
    from meldkit.methods.registry import get_method

    if args.threads:
        torch.set_num_threads(args.threads)
    methods, missing = [], []
    for name in args.methods:
        try:
            get_method(name)
            methods.append(name)
        except RecipeError:
            missing.append(name)
    if missing:
        print(f"not registered yet, skipped: {', '.join(missing)}")
    if not torch.cuda.is_available():
        print("no CUDA device: CPU timings only")
    args.scratch.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "command": " ".join(["python", "benchmarks/spectral.py", *(argv or sys.argv[1:])]),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "skipped": missing,
        "shapes": [],
        "med": [],
    }
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = results / f"spectral-{stamp}.json"
    # Saved after every shape and every med merge: a long run stopped early keeps its rows.
    for text in args.shapes:
        result["shapes"] += _time_shape(
            _shape(text), methods, args.scratch, args.tasks, args.repeat
        )
        target.write_text(json.dumps(result, indent=2) + "\n")
    result["med_sums"] = _med_sums(result["shapes"])
    if args.med:
        for name in methods:
            result["med"] += _time_med([name], REPO / "bench-data" / "med", args.scratch)
            target.write_text(json.dumps(result, indent=2) + "\n")
    target.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
