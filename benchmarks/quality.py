"""TinyTasks quality benchmark: merge recipes, score what the merged models can still do.

    python benchmarks/quality.py                      # the whole grid, fp32 and bf16 sets
    python benchmarks/quality.py --only 'tsv*' 'ta_*' --sets fp32
    python benchmarks/quality.py --recipes ../shared/tinytasks/recipes   # any TT/ recipes
    python benchmarks/quality.py --write-doc          # also render the table into docs/methods.md
    python benchmarks/quality.py --render a.json b.json   # render saved results only

TinyTasks (``../shared/tinytasks``) is a 1M-parameter Llama with four task fine-tunes (reverse,
sort, Caesar shift, double letters). Every row of the grid (``quality_grid.py``: each method at
a fixed, stated budget of sweep points, plus MergeKit's reference recipes) is merged with
meldkit in this process (``meldkit.run_merge``, seed 0) and evaluated with TinyTasks' own
``eval.py`` (greedy exact match on ``--n`` held-out prompts per task). The score is TinyTasks'
**norm**: the mean over tasks of (merge accuracy / that task's fine-tune's own accuracy), so 1.0
means every skill was kept. The fine-tunes are evaluated first, in the same run, to normalise.

``--models ROOT``: ``ROOT/fp32`` and ``ROOT/bf16`` (or ROOT itself when it holds ``base/`` and
``ft_<task>/``), so a second TinyTasks set built with another seed runs unchanged. fp32 models
are merged in float32, bf16 ones in bfloat16, as MergeKit's baseline in
``../shared/tinytasks/RESULTS.md`` was.

Results go to ``benchmarks/results/quality.json`` (one object per set and row; ``--resume``
keeps rows whose recipe text and models are unchanged, so a grown grid only runs what is new).
``--write-doc`` replaces the block between ``<!-- quality:begin -->`` and
``<!-- quality:end -->`` in ``docs/methods.md``. Differences below about 0.02 are within the
noise of 200 prompts per task.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# Python puts this folder first on sys.path, where benchmarks/profile.py would shadow the
# standard library's profile module (torch imports cProfile); the siblings load by path instead.
if sys.path and Path(sys.path[0] or ".").resolve() == HERE:
    sys.path.pop(0)


def _sibling(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_grid = _sibling("quality_grid")
Row, build_grid, recipe_rows = _grid.Row, _grid.build_grid, _grid.recipe_rows
render_doc = _sibling("quality_table").render_doc

TASKS = ("rev", "srt", "sft", "dup")
DTYPE_OF_SET = {"fp32": "float32", "bf16": "bfloat16"}


def model_sets(root: Path, names: list[str]) -> dict[str, Path]:
    """``{set name: folder with base/ and ft_<task>/}`` for the sets asked for."""
    if (root / "base").is_dir():
        return {root.name: root}
    found = {n: root / n for n in names if (root / n / "base").is_dir()}
    missing = [n for n in names if n not in found]
    if missing:
        sys.exit(f"quality.py: no {', '.join(missing)} set under {root} (want {root}/<set>/base)")
    return found


def load_evaluator(tinytasks: Path) -> Any:
    """TinyTasks' ``eval.py`` as a module (its tasks, tokenizer and greedy evaluator)."""
    sys.path.append(str(tinytasks))
    import eval as tt_eval  # type: ignore[import-not-found]

    tt_eval.quiet_transformers()
    return tt_eval


def evaluate(tt_eval: Any, folder: Path, n: int) -> dict[str, float]:
    model = tt_eval.load_model(str(folder))
    scores: dict[str, float] = tt_eval.evaluate(model, n, list(TASKS))
    return scores


def fingerprint(folder: Path) -> str:
    """Sizes and mtimes of a model folder's weight files: enough to see it was rebuilt."""
    parts = []
    for f in sorted(folder.glob("*.safetensors")):
        st = f.stat()
        parts.append(f"{f.name}:{st.st_size}:{int(st.st_mtime)}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def code_fingerprint() -> str:
    """A hash of meldkit's sources: a cached row is reused only with the code that made it."""
    digest = hashlib.sha256()
    for f in sorted((REPO / "src" / "meldkit").rglob("*.py")):
        digest.update(f.read_bytes())
    return digest.hexdigest()[:12]


def normalised(scores: dict[str, float], own: dict[str, float]) -> float:
    """TinyTasks' norm: mean over tasks of acc / the task's fine-tune's own acc."""
    return sum(scores[t] / own[t] for t in TASKS) / len(TASKS)


def run_row(row: Row, root: Path, dtype: str, tt_eval: Any, n: int, work: Path) -> dict[str, Any]:
    """Merge one grid row on one model set and evaluate it."""
    import meldkit

    recipe = row.recipe(root, dtype)
    out = work / row.name
    t0 = time.perf_counter()

    # Warnings are shown: a misspelt grid parameter is only a warning to the planner.
    def warn(message: str) -> None:
        print(f"  {row.name}: warning: {message}", file=sys.stderr)

    meldkit.run_merge(recipe, out, seed=0, quiet=True, overwrite=True, on_warning=warn)
    merge_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    scores = evaluate(tt_eval, out, n)
    return {
        "scores": scores,
        "merge_s": round(merge_s, 2),
        "eval_s": round(time.perf_counter() - t1, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tinytasks", type=Path, default=REPO.parent / "shared" / "tinytasks")
    ap.add_argument("--models", type=Path, default=None, help="default: TINYTASKS/models")
    ap.add_argument("--sets", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--only", nargs="+", default=None, help="row names to run (shell patterns)")
    ap.add_argument(
        "--recipes",
        type=Path,
        default=None,
        help="a folder of TT/ recipes to run instead of the grid",
    )
    ap.add_argument("--n", type=int, default=200, help="prompts per task (default 200)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "quality.json")
    ap.add_argument("--resume", action="store_true", help="keep unchanged rows of --out")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: scores do not depend on it)",
    )
    ap.add_argument(
        "--write-doc", action="store_true", help="render the table into docs/methods.md"
    )
    ap.add_argument(
        "--render",
        nargs="+",
        type=Path,
        default=None,
        metavar="JSON",
        help="only render these saved results (e.g. one file per set) into docs/methods.md",
    )
    args = ap.parse_args(argv)
    if args.render:
        return _render_only(args.render)

    args.models = args.models or args.tinytasks / "models"
    rows = recipe_rows(args.recipes) if args.recipes else build_grid(args.tinytasks)
    if args.only:
        rows = [r for r in rows if any(fnmatch.fnmatch(r.name, p) for p in args.only)]
    sets = model_sets(args.models, args.sets)
    import torch

    from meldkit.errors import MergeInterrupted

    torch.set_num_threads(args.threads)
    tt_eval = load_evaluator(args.tinytasks)
    old: dict[str, Any] = {}
    if args.resume and args.out.exists():
        old = {r["key"]: r for r in json.loads(args.out.read_text())["rows"]}
    results: list[dict[str, Any]] = []
    own: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="meldkit-quality-") as tmp:
        for set_name, root in sets.items():
            dtype = DTYPE_OF_SET.get(set_name, "float32")
            fp = fingerprint(root / "base")
            code = code_fingerprint()
            fts = {}
            for t in TASKS:
                key = f"{set_name}|{fp}|{args.n}|ft_{t}"
                fts[t] = (
                    old[key]["scores"]
                    if key in old
                    else evaluate(tt_eval, root / f"ft_{t}", args.n)
                )
            own[set_name] = {t: fts[t][t] for t in TASKS}
            for t, s in fts.items():
                res = _result(set_name, f"ft_{t}", "fine-tune", {}, s, own[set_name], None, fp)
                res["key"], res["scores"] = f"{set_name}|{fp}|{args.n}|ft_{t}", s
                results.append(res)
            for row in rows:
                text = yaml.safe_dump(row.recipe(Path("TT"), dtype), sort_keys=True)
                key = hashlib.sha256(
                    f"{set_name}|{fp}|{code}|{args.n}|{text}".encode()
                ).hexdigest()[:20]
                if key in old:
                    results.append(old[key])
                    continue
                try:
                    got = run_row(row, root, dtype, tt_eval, args.n, Path(tmp))
                except MergeInterrupted:
                    raise
                except Exception as exc:  # a failed row is reported, the grid goes on
                    print(
                        f"{set_name} {row.name}: FAILED {type(exc).__name__}: {exc}",
                        file=sys.stderr,
                    )
                    continue
                res = _result(
                    set_name,
                    row.name,
                    row.method,
                    row.params_shown(),
                    got["scores"],
                    own[set_name],
                    got,
                    fp,
                    row,
                )
                res["key"] = key
                results.append(res)
                _save(args.out, args.n, args.models, own, results)
                print(
                    f"{set_name:5s} {row.name:28s} norm {res['norm']:.3f}  "
                    + " ".join(f"{t} {res[t]:.3f}" for t in TASKS)
                    + f"  ({got['merge_s']:.1f}s merge, {got['eval_s']:.0f}s eval)",
                    flush=True,
                )
    payload = _save(args.out, args.n, args.models, own, results)
    print(f"saved {args.out}")
    if args.write_doc:
        doc = REPO / "docs" / "methods.md"
        doc.write_text(render_doc(doc.read_text(), payload))
        print(f"updated {doc}")
    return 0


def _render_only(files: list[Path]) -> int:
    """Render saved results (several files: their rows together) into docs/methods.md."""
    payloads = [json.loads(f.read_text()) for f in files]
    merged = {
        "n": payloads[0]["n"],
        "models": payloads[0]["models"],
        "own": {k: v for p in payloads for k, v in p["own"].items()},
        # A row measured again in a later file replaces the earlier one.
        "rows": list({(r["set"], r["name"]): r for p in payloads for r in p["rows"]}.values()),
    }
    doc = REPO / "docs" / "methods.md"
    doc.write_text(render_doc(doc.read_text(), merged))
    print(f"updated {doc}")
    return 0


def _save(
    out: Path, n: int, models: Path, own: dict[str, Any], rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """Write the results so far (after every row: a long grid that stops keeps its rows)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"n": n, "models": str(models), "own": own, "rows": rows}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    tmp.replace(out)
    return payload


def _result(
    set_name: str,
    name: str,
    method: str,
    params: dict[str, Any],
    scores: dict[str, float],
    own: dict[str, float],
    got: dict[str, Any] | None,
    fp: str,
    row: Row | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"set": set_name, "name": name, "method": method, "params": params}
    out.update({t: round(scores[t], 4) for t in TASKS})
    out["mean"] = round(sum(scores[t] for t in TASKS) / len(TASKS), 4)
    out["norm"] = round(normalised(scores, own), 4)
    if row is not None:
        out["family"] = row.family
        out["default"] = row.default
    if got is not None:
        out["merge_s"] = got["merge_s"]
        out["eval_s"] = got["eval_s"]
    out["models"] = fp
    return out


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
