"""Raw-checkpoint and in-memory merges against their disk-bound baselines, in one process.

Measured, alternating, ``--repeat`` times each, on a synthetic set (default ``small``: a
base and fine-tunes from ``bench-data/``):

* ``memory``: ``prepare_state_dict_merge(...).merge(parameters)`` on state dicts already in
  memory, against ``disk``: what an evolutionary search does without it, ``run_merge`` of the
  same recipe into a folder plus reading the merged tensors back (``read_model``);
* ``replan``: the planning part of one ``merge(parameters)`` (re-resolving the parameters for
  every tensor), in milliseconds;
* ``floor`` (linear only): the same weighted sum as a plain torch loop over the dicts
  (float32 math, one cast), the least an in-memory merge can cost;
* ``raw``: ``merge_raw`` over the same tensors saved as single ``.safetensors`` files, against
  ``folder``: ``run_merge`` over the model folders (the same engine; the ratio should be ~1).

Every pair is checked to give equal tensors. Prints one line per measurement, then the ratios.

    python benchmarks/raw.py [--set small] [--methods linear,ties] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from meldkit.api import merge_raw, prepare_state_dict_merge, run_merge
from meldkit.testing import read_model

ROOT = Path(__file__).resolve().parent.parent / "bench-data"


def _recipe(method: str, base: str, fts: list[str], weight: float) -> dict[str, object]:
    params = {"weight": weight} if method == "linear" else {"weight": weight, "density": 0.5}
    recipe: dict[str, object] = {
        "merge_method": method,
        "models": [{"model": m, "parameters": params} for m in fts],
    }
    if method != "linear":
        recipe["base_model"] = base
    return recipe


def _timed(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def _linear_floor(states: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Equal weights, normalised: the mean, in float32, cast once."""
    first, *others = states.values()
    out = {}
    for name, x in first.items():
        acc = x.float() * (1 / len(states))
        for other in others:
            acc.add_(other[name].float(), alpha=1 / len(states))
        out[name] = acc.to(x.dtype)
    return out


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", default="small")
    ap.add_argument("--methods", default="linear,ties")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    folder = ROOT / args.set
    base, fts = folder / "base", [folder / "ft1", folder / "ft2"]
    states = {p.name: read_model(p) for p in [base, *fts]}
    n_tensors = len(states["base"])
    print(f"set {args.set}: {n_tensors} tensors per model, torch threads {torch.get_num_threads()}")
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="meldkit-raw-bench-") as tmp_name:
        tmp = Path(tmp_name)
        raw_files = {}
        for name, state in states.items():
            raw_files[name] = tmp / f"{name}.safetensors"
            save_file(state, raw_files[name])
        for method in args.methods.split(","):
            keyed = {"ft1": states["ft1"], "ft2": states["ft2"]}
            per = {"weight": 0.5} if method == "linear" else {"weight": 0.5, "density": 0.5}
            prepared = prepare_state_dict_merge(
                keyed,
                method,
                base=None if method == "linear" else states["base"],
                model_parameters={"ft1": per, "ft2": per},
            )
            for i in range(args.repeat):
                weight = 0.3 + 0.1 * i  # a new parameter set each time, as a search would
                per = (
                    {"weight": weight} if method == "linear" else {"weight": weight, "density": 0.5}
                )
                t_mem, got = _timed(prepared.merge, model_parameters={"ft1": per, "ft2": per})
                if method == "linear":
                    t_floor, floor = _timed(_linear_floor, keyed)
                    # The method divides by the weight sum; the floor multiplies by 1/n: the
                    # results may differ by one rounding of the output dtype.
                    assert all(
                        torch.allclose(got[k].float(), floor[k].float(), rtol=1e-2, atol=1e-6)
                        for k in floor
                    ), "linear: merge_state_dicts and the floor differ"
                    results.setdefault("linear floor", []).append(t_floor)
                    del floor
                t_plan, _ = _timed(prepared.plan_for, model_parameters={"ft1": per, "ft2": per})
                recipe = _recipe(method, str(base), [str(p) for p in fts], weight)
                out = tmp / f"out-{method}-{i}"
                t0 = time.perf_counter()
                run_merge(recipe, out, quiet=True)
                disk = read_model(out)
                t_disk = time.perf_counter() - t0
                assert _same(got, disk), f"{method}: memory and disk merges differ"
                raw_recipe = _recipe(
                    method,
                    str(raw_files["base"]),
                    [str(raw_files[k]) for k in ("ft1", "ft2")],
                    weight,
                )
                t_raw, target = _timed(
                    merge_raw, raw_recipe, tmp / f"raw-{method}-{i}.safetensors", quiet=True
                )
                t_folder, _ = _timed(run_merge, recipe, tmp / f"folder-{method}-{i}", quiet=True)
                assert _same(load_file(target), disk), f"{method}: raw and folder merges differ"
                for key, value in (
                    ("memory", t_mem),
                    ("disk", t_disk),
                    ("replan", t_plan),
                    ("raw", t_raw),
                    ("folder", t_folder),
                ):
                    results.setdefault(f"{method} {key}", []).append(value)
            del got, disk
    for key, values in results.items():
        unit, scale = ("ms", 1000) if key.endswith("replan") else ("s", 1)
        print(
            f"{key:>18}: median {statistics.median(values) * scale:8.3f} {unit} over {len(values)}"
        )
    for method in args.methods.split(","):
        med = {
            k.split()[1]: statistics.median(v)
            for k, v in results.items()
            if k.startswith(method + " ")
        }
        if method == "linear":
            print(f"linear: memory/floor {med['memory'] / med['floor']:.2f}x")
        print(
            f"{method}: disk/memory {med['disk'] / med['memory']:.1f}x, "
            f"raw/folder {med['raw'] / med['folder']:.2f}x, "
            f"replan {med['replan'] / med['memory'] * 100:.1f}% of a memory merge"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
