"""Same bytes before and after a restructuring: every method merged on a benchmark set by an old
tree and by the new one, compared by sha256.

    python benchmarks/same_bytes.py --old f271d9a [--sets small] [--methods all|NAME...]

The requirement: for every registered method, the benchmark sets' outputs are byte-identical
before and after the restructuring; the only exceptions are the float-sum tolerances listed in
``TOLERANCES`` below, each with its measured maximum difference.

What it does, in order:

1. The old tree: ``git archive REV src`` extracted into ``DATA/trees/REV/`` (once, then
   reused). The new tree: the live ``src/``, copied first to ``DATA/snapshots/DIGEST/`` by
   ``benchmarks/run.py``'s ``use_sources`` (``DIGEST`` is its ``src_digest``), so that edits
   made to the checkout during a run do not mix versions.
2. The sets (``benchmarks/run.py``'s ``SETS`` and ``make_set``; a maker still writing a set is
   waited for). One child process per tree describes that tree's registry and the recipe
   ``make_recipe`` writes for each method; the method list and the recipes are the new
   tree's (the old tree runs the same recipe files), a method the old tree lacks is "new".
3. Each merge is its own process, ``python -m meldkit merge RECIPE OUT --quiet --overwrite
   --random-seed 0``, with ``PYTHONPATH=TREE/src`` first (ahead of the editable install; the
   describe child checks which meldkit that imports) and ``NUMBA_CACHE_DIR`` per tree. The sha256 of
   every weight file (``*.safetensors``, ``model.safetensors.index.json``) and the wall time
   are cached per tree and set in ``DATA/same_bytes/TREE-SET.json``; an entry is reused while
   its recipe, its inputs (sha256 of the set's files) and the settings (threads, CPU count,
   torch/numba/safetensors versions) are unchanged. So the old side runs once, later runs redo
   only the new side.
4. Where the bytes differ, both outputs are loaded (re-merged when no longer on disk, which
   also checks that the merge reproduces its cached hashes) and compared tensor by tensor in
   float32: the number of differing elements and the largest absolute and relative
   difference per tensor, and the largest over the model.

Prints a table (method, result, largest differences, seconds old/new) and a line of counts;
saves the comparison in ``DATA/same_bytes/report-OLD-NEW-SET.json``. Exit code 0 only when
every compared method is identical or within its ``TOLERANCES`` entry. Seconds marked ``*``
include numba compiling into a fresh cache.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import run as bench  # noqa: E402  (benchmarks/run.py, beside this script)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# Methods whose output may differ from the old tree's by float-summation order, with the largest
# absolute difference allowed (bf16 output values, compared in float32) and why. Keep the
# measured maximum of each entry in its reason. Empty: every method must be byte-identical.
TOLERANCES: dict[str, tuple[float, str]] = {}

MERGE_FLAGS = ["--quiet", "--overwrite", "--random-seed", "0"]
WEIGHT_INDEX = "model.safetensors.index.json"
SHOW_TENSORS = 10  # differing tensors printed per method, largest difference first

# ---------------------------------------------------------------------------------------------
# Trees


class Tree:
    """One source tree: ``root/meldkit`` is imported by every child run for it."""

    def __init__(self, kind: str, ident: str, root: Path, data: Path) -> None:
        self.kind, self.ident, self.root = kind, ident, root
        self.work = data / "same_bytes"
        self.numba = self.work / "numba" / ident

    def env(self, base_pythonpath: str | None) -> dict[str, str]:
        parts = [str(self.root)] + ([base_pythonpath] if base_pythonpath else [])
        return dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(parts),
            NUMBA_CACHE_DIR=str(self.numba),
            PYTHONUNBUFFERED="1",
        )

    def numba_files(self) -> int:
        return sum(1 for _ in self.numba.rglob("*")) if self.numba.is_dir() else 0


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()


def old_tree(rev: str, data: Path) -> Tree:
    """``git archive REV src`` into ``DATA/trees/REV/`` unless it is there already."""
    try:
        ident = git("rev-parse", "--short", f"{rev}^{{commit}}")
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"--old {rev}: not a commit ({exc.stderr.strip()})") from exc
    folder = data / "trees" / ident
    if not (folder / "src" / "meldkit" / "__init__.py").is_file():
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "archive", ident, "src"], cwd=REPO, capture_output=True, check=True
        ).stdout
        tar = tmp / "src.tar"
        tar.write_bytes(archive)
        with tarfile.open(tar) as fh:
            fh.extractall(tmp, filter="data")
        tar.unlink()
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
        print(f"old tree {ident}: extracted into {folder}", flush=True)
    return Tree("old", ident, folder / "src", data)


def _snapshot_digest(root: Path) -> str:
    """``bench.src_digest`` computed over a snapshot instead of the live src/."""
    digest = hashlib.sha256()
    for f in sorted((root / "meldkit").rglob("*.py")):
        rel = "src/" + f.relative_to(root).as_posix()
        digest.update(rel.encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()[:12]


def new_tree(data: Path) -> Tree:
    """A frozen copy of the live src/ (``bench.use_sources``), checked against its name: a file
    edited while it was copied gets the copy made again."""
    for _ in range(5):
        root = bench.use_sources(data, snapshot=True)
        if _snapshot_digest(root) == root.name:
            return Tree("new", root.name, root, data)
        print(f"snapshot {root.name} changed while it was copied; copying again", flush=True)
        shutil.rmtree(root, ignore_errors=True)
        time.sleep(2)
    raise SystemExit("src/ keeps changing while it is copied; try again")


# ---------------------------------------------------------------------------------------------
# Sets


def _maker_running(folder: Path) -> bool:
    """A make_models.py (or reference.py make) process with ``folder`` among its arguments."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            args = [
                a.decode(errors="replace")
                for a in (proc / "cmdline").read_bytes().split(b"\0")
                if a
            ]
            cwd = Path(os.readlink(proc / "cwd"))
        except OSError:
            continue
        if not any(a.endswith(("make_models.py", "reference.py")) for a in args):
            continue
        if any((cwd / a).resolve() == folder for a in args if not a.startswith("-")):
            return True
    return False


def ensure_set(name: str, data: Path, timeout: float) -> Path:
    """Wait for a maker that is still writing the set (its process alive, or its log recent,
    the set incomplete and no ``rc=`` line yet), then let ``bench.make_set`` reuse or make it."""
    folder = data / name
    log = data / "logs" / f"make_{name}.log"
    models = ["base"] + [f"ft{i}" for i in range(1, bench.N_FINETUNES + 1)]
    deadline = time.monotonic() + timeout
    said = False
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.is_file() else ""
        recent = log.is_file() and time.time() - log.stat().st_mtime < 600
        complete = all(bench._complete(folder / m) for m in models)
        if "rc=" in text or not (_maker_running(folder) or (recent and not complete)):
            break
        if not said:
            print(f"waiting for the maker of set {name} (log {log}) ...", flush=True)
            said = True
        time.sleep(5)
    codes = [
        ln.strip()
        for ln in (log.read_text(errors="replace").splitlines() if log.is_file() else [])
        if ln.startswith("rc=")
    ]
    if codes and codes[-1] != "rc=0":
        raise SystemExit(f"the maker of set {name} failed ({codes[-1]}); see {log}")
    bench.make_set(name, data, timeout)
    return folder


def inputs_digest(folder: Path, work: Path) -> str:
    """sha256 over every file of the set (cached by path, size and mtime)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    stat = [
        [p.relative_to(folder).as_posix(), p.stat().st_size, p.stat().st_mtime_ns] for p in files
    ]
    cache = work / f"inputs-{folder.name}.json"
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("stat") == stat:
            return saved["sha256"]
    digest = hashlib.sha256()
    for p, (rel, _, _) in zip(files, stat):
        digest.update(rel.encode() + b"\0" + file_sha256(p).encode())
    value = digest.hexdigest()[:16]
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"sha256": value, "stat": stat}) + "\n")
    return value


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Registry and recipes, described by a child process of each tree


def describe_main(folder: str) -> int:
    """In a child with one tree first on PYTHONPATH: that tree's methods and their recipes."""
    import meldkit

    specs, skipped = bench.select_methods(["all"])
    methods: dict[str, Any] = {}
    for spec in specs:
        made = bench.make_recipe(spec, Path(folder))
        methods[spec.name] = (
            {"skip": made}
            if isinstance(made, str)
            else {"recipe": made[0], "randomized": bool(spec.randomized)}
        )
    for s in skipped:
        methods[s["method"]] = {"skip": s["why"]}
    print(json.dumps({"meldkit": meldkit.__file__, "methods": methods}))
    return 0


def describe(tree: Tree, folder: Path, base_pythonpath: str | None) -> dict[str, Any]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--describe", str(folder)]
    proc = subprocess.run(
        argv, capture_output=True, text=True, env=tree.env(base_pythonpath), cwd=tree.work
    )
    if proc.returncode:
        tail = " / ".join(proc.stderr.strip().splitlines()[-3:])
        return {"error": f"its registry does not load: {tail}"}
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    if not Path(info["meldkit"]).resolve().is_relative_to(tree.root.resolve()):
        return {"error": f"imported meldkit from {info['meldkit']}, not from {tree.root}"}
    return info


# ---------------------------------------------------------------------------------------------
# Merging


def settings(threads: int | None) -> dict[str, Any]:
    """What besides the sources and the recipe decides the bytes; a cached entry made under
    other settings is redone."""
    versions = {}
    for dist in ("torch", "numba", "numpy", "safetensors"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "flags": MERGE_FLAGS + (["--threads", str(threads)] if threads else []),
        "threads": threads,
        "nproc": os.cpu_count(),
        "python": sys.version.split()[0],
        **versions,
    }


def weight_hashes(out: Path) -> dict[str, str]:
    names = sorted(p.name for p in out.glob("*.safetensors"))
    if (out / WEIGHT_INDEX).is_file():
        names.append(WEIGHT_INDEX)
    return {n: file_sha256(out / n) for n in names}


def merge(
    tree: Tree,
    recipe: Path,
    out: Path,
    log: Path,
    opts: dict[str, Any],
    base_pythonpath: str | None,
    timeout: float,
) -> dict[str, Any]:
    """One merge process of ``tree``; its wall time, exit status and weight-file hashes."""
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "meldkit", "merge", str(recipe), str(out), *opts["flags"]]
    numba_before = tree.numba_files()
    start = time.perf_counter()
    with open(log, "wb") as fh:
        try:
            rc = subprocess.run(
                argv,
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=tree.work,
                env=tree.env(base_pythonpath),
                timeout=timeout,
            ).returncode
        except subprocess.TimeoutExpired:
            rc = -9
    seconds = round(time.perf_counter() - start, 2)
    text = log.read_text(errors="replace")
    entry: dict[str, Any] = {
        "rc": rc,
        "seconds": seconds,
        "log": str(log),
        "compiled": tree.numba_files() > numba_before,
    }
    if rc:
        tail = text.strip().splitlines()[-3:]
        entry["error"] = " / ".join(tail)[:400] or f"exit {rc}"
    else:
        entry["files"] = weight_hashes(out)
    return entry


class Side:
    """One tree's merges on one set, with the per-tree cache file."""

    def __init__(self, tree: Tree, set_name: str, args: argparse.Namespace) -> None:
        self.tree, self.set, self.args = tree, set_name, args
        self.cache_path = tree.work / f"{tree.ident}-{set_name}.json"
        self.cache: dict[str, Any] = {
            "tree": tree.ident,
            "kind": tree.kind,
            "source": str(tree.root),
            "set": set_name,
            "methods": {},
        }
        if self.cache_path.is_file():
            self.cache = json.loads(self.cache_path.read_text())
        self.out = tree.work / "out" / tree.ident / set_name
        self.logs = tree.work / "logs" / tree.ident / set_name

    def key(self, recipe_sha: str, inputs: str) -> dict[str, Any]:
        return {
            "recipe_sha256": recipe_sha,
            "inputs_sha256": inputs,
            "settings": settings(self.args.threads),
        }

    def get(self, method: str, recipe: Path, key: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """The cached entry, else a fresh merge (cached). Returns (entry, ran now)."""
        entry = self.cache["methods"].get(method)
        if entry and all(entry.get(k) == v for k, v in key.items()) and not entry["rc"]:
            return entry, False
        entry = {
            **key,
            **merge(
                self.tree,
                recipe,
                self.out / method,
                self.logs / f"{method}.log",
                key["settings"],
                self.args.base_pythonpath,
                self.args.timeout,
            ),
        }
        self.cache["methods"][method] = entry
        self.save()
        return entry, True

    def output(self, method: str, recipe: Path) -> tuple[Path, str]:
        """The output folder of a cached entry, merged again if it is gone; and a note when the
        merge no longer reproduces the cached hashes."""
        entry = self.cache["methods"][method]
        out = self.out / method
        if out.is_dir() and weight_hashes(out) == entry.get("files"):
            return out, ""
        again = merge(
            self.tree,
            recipe,
            out,
            self.logs / f"{method}.again.log",
            entry["settings"],
            self.args.base_pythonpath,
            self.args.timeout,
        )
        if again["rc"]:
            return out, f"{self.tree.kind} re-merge failed: {again.get('error')}"
        if again["files"] != entry["files"]:
            return out, f"{self.tree.kind} side not reproducible: its re-merge gave other bytes"
        return out, ""

    def drop(self, method: str) -> None:
        if not self.args.keep:
            shutil.rmtree(self.out / method, ignore_errors=True)

    def save(self) -> None:
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.cache, indent=1, sort_keys=True) + "\n")
        tmp.replace(self.cache_path)


# ---------------------------------------------------------------------------------------------
# Comparing


def _tensors(folder: Path) -> dict[str, Path]:
    from safetensors import safe_open

    where: dict[str, Path] = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            where.update({k: f for k in fh.keys()})
    return where


def compare_outputs(old: Path, new: Path) -> dict[str, Any]:
    """Tensor by tensor, in float32: differing elements, max |old-new|, max relative."""
    import torch
    from safetensors import safe_open

    a_at, b_at = _tensors(old), _tensors(new)
    result: dict[str, Any] = {
        "only_old": sorted(set(a_at) - set(b_at)),
        "only_new": sorted(set(b_at) - set(a_at)),
        "tensors": {},
        "max_abs": 0.0,
        "max_rel": 0.0,
        "differing_elements": 0,
        "compared_elements": 0,
        "structural": [],
    }
    if result["only_old"] or result["only_new"]:
        result["structural"].append(
            f"{len(result['only_old'])} tensors only in old, {len(result['only_new'])} only in new"
        )
    for name in sorted(set(a_at) & set(b_at)):
        with safe_open(str(a_at[name]), framework="pt") as fa:
            a = fa.get_tensor(name)
        with safe_open(str(b_at[name]), framework="pt") as fb:
            b = fb.get_tensor(name)
        if a.dtype != b.dtype or a.shape != b.shape:
            result["structural"].append(
                f"{name}: {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}"
            )
            continue
        result["compared_elements"] += a.numel()
        bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        differ = a.view(bits) != b.view(bits)  # bitwise, so NaN == NaN and -0 != +0
        n = int(differ.sum())
        if not n:
            continue
        x, y = a[differ].float(), b[differ].float()
        diff = (x - y).abs()
        diff = torch.where(torch.isnan(diff), torch.full_like(diff, float("inf")), diff)
        scale = torch.maximum(x.abs(), y.abs())
        rel = torch.where(scale > 0, diff / scale, torch.zeros_like(diff))
        rel = torch.where(torch.isnan(rel), torch.full_like(rel, float("inf")), rel)
        row = {
            "differing": n,
            "numel": a.numel(),
            "max_abs": float(diff.max()),
            "max_rel": float(rel.max()),
        }
        result["tensors"][name] = row
        result["differing_elements"] += n
        result["max_abs"] = max(result["max_abs"], row["max_abs"])
        result["max_rel"] = max(result["max_rel"], row["max_rel"])
    return result


# ---------------------------------------------------------------------------------------------


def fmt_s(entry: dict[str, Any] | None) -> str:
    if not entry or "seconds" not in entry:
        return "-"
    return f"{entry['seconds']:.1f}" + ("*" if entry.get("compiled") else "")


def run_set(name: str, old: Tree, new: Tree, args: argparse.Namespace) -> list[dict[str, Any]]:
    folder = ensure_set(name, args.data, args.timeout)
    inputs = inputs_digest(folder, new.work)
    new_info = describe(new, folder, args.base_pythonpath)
    old_info = describe(old, folder, args.base_pythonpath)
    for tree, info in ((new, new_info), (old, old_info)):
        if "error" in info:
            print(f"{tree.kind} tree {tree.ident}: {info['error']}", flush=True)
    source = new_info if "error" not in new_info else old_info
    if "error" in source:
        raise SystemExit("neither tree's registry loads")
    if source is old_info:
        print(
            "the method list and recipes come from the OLD tree, since the new one's registry "
            "does not load",
            flush=True,
        )
    registered = source["methods"]
    wanted = sorted(registered) if args.methods in (["all"], []) else args.methods
    old_methods = old_info.get("methods", {})
    sides = {"old": Side(old, name, args), "new": Side(new, name, args)}
    rows: list[dict[str, Any]] = []
    if args.methods in (["all"], []) and "error" not in new_info:
        for gone in sorted(set(old_methods) - set(registered)):
            rows.append(
                {
                    "method": gone,
                    "result": "REMOVED",
                    "note": "registered in the old tree, not in the new",
                }
            )
            print(f"{gone}: REMOVED (registered in the old tree, not in the new)", flush=True)
    for method in wanted:
        row: dict[str, Any] = {"method": method}
        rows.append(row)
        spec = registered.get(method)
        if spec is None:
            row.update(result="FAILED", note="not registered")
        elif "skip" in spec:
            row.update(result="skipped", note=spec["skip"])
        else:
            recipe = args.data / "same_bytes" / "recipes" / f"{name}_{method}.yml"
            bench.write_yaml(recipe, spec["recipe"])
            recipe_sha = file_sha256(recipe)
            old_spec = old_methods.get(method)
            if old_spec and old_spec.get("recipe") not in (None, spec["recipe"]):
                row["note"] = "the old tree's make_recipe differs; both ran the new recipe"
            entries: dict[str, dict[str, Any]] = {}
            for kind in ("old", "new"):
                if kind == "old" and "error" not in old_info and method not in old_methods:
                    continue
                if kind == "old" and old_spec and "skip" in old_spec:
                    continue
                entries[kind], ran = sides[kind].get(
                    method, recipe, sides[kind].key(recipe_sha, inputs)
                )
                e = entries[kind]
                state = "ok" if not e["rc"] else f"exit {e['rc']}: {e.get('error')}"
                print(
                    f"  {kind:3} {method}: {fmt_s(e)} s{'' if ran else ' (cached)'} {state}",
                    flush=True,
                )
            judge(row, method, entries, sides, recipe, old_spec)
            for side in sides.values():
                if method in side.cache["methods"]:
                    side.drop(method)
            row["seconds_old"] = fmt_s(entries.get("old"))
            row["seconds_new"] = fmt_s(entries.get("new"))
        print(format_row(row), flush=True)
    return rows


def judge(
    row: dict[str, Any],
    method: str,
    entries: dict[str, dict[str, Any]],
    sides: dict[str, Side],
    recipe: Path,
    old_spec: dict[str, Any] | None,
) -> None:
    old_e, new_e = entries.get("old"), entries.get("new")
    if old_e is None:
        why = old_spec["skip"] if old_spec and "skip" in old_spec else "not in the old tree"
        row.update(result="new", note=why)
        if new_e and new_e["rc"]:
            row.update(result="FAILED", note=f"new: {new_e.get('error')}")
        return
    assert new_e is not None
    if old_e["rc"] or new_e["rc"]:
        bad = [f"{k}: {e.get('error')}" for k, e in entries.items() if e["rc"]]
        row.update(result="FAILED", note="; ".join(bad))
        return
    if old_e["files"] == new_e["files"]:
        row.update(result="identical", max_abs=0.0, max_rel=0.0)
        return
    old_out, note_old = sides["old"].output(method, recipe)
    new_out, note_new = sides["new"].output(method, recipe)
    notes = [n for n in (note_old, note_new) if n]
    if any("failed" in n for n in notes):
        row.update(result="DIFFERENT", note="; ".join(notes) + "; cannot compare the tensors")
        return
    diff = compare_outputs(old_out, new_out)
    row.update(
        max_abs=diff["max_abs"],
        max_rel=diff["max_rel"],
        differing_elements=diff["differing_elements"],
        compared_elements=diff["compared_elements"],
        tensors=diff["tensors"],
        structural=diff["structural"],
    )
    names = ", ".join(sorted(n for n in old_e["files"].keys() ^ new_e["files"].keys()))
    if names:
        notes.append(f"weight files differ in name: {names}")
    if not diff["tensors"] and not diff["structural"]:
        notes.append("same tensor values, other bytes (header, order or sharding)")
    allowed = TOLERANCES.get(method)
    ok = (
        allowed is not None
        and not diff["structural"]
        and diff["max_abs"] <= allowed[0]
        and not any("reproducible" in n for n in notes)
    )
    row["result"] = "within tolerance" if ok else "DIFFERENT"
    if allowed is not None:
        notes.append(f"tolerance {allowed[0]:g} ({allowed[1]})")
    if notes:
        row["note"] = "; ".join(notes)
    ranked = sorted(diff["tensors"].items(), key=lambda kv: (-kv[1]["max_abs"], kv[0]))
    for tname, t in ranked[:SHOW_TENSORS]:
        print(
            f"    {tname}: {t['differing']}/{t['numel']} elements differ, max abs "
            f"{t['max_abs']:.3g}, max rel {t['max_rel']:.3g}",
            flush=True,
        )
    if len(ranked) > SHOW_TENSORS:
        print(f"    ... and {len(ranked) - SHOW_TENSORS} more tensors (all in the report JSON)")
    if ranked:
        print(
            f"    model: {len(ranked)} tensors, {diff['differing_elements']}/"
            f"{diff['compared_elements']} elements differ, max abs {diff['max_abs']:.3g}, "
            f"max rel {diff['max_rel']:.3g}",
            flush=True,
        )
    for s in diff["structural"]:
        print(f"    {s}", flush=True)


HEADER = (
    "| method | result | max abs diff | max rel diff | differing elements | s old | s new | note |"
)
RULE = "|---|---|---:|---:|---:|---:|---:|---|"


def format_row(row: dict[str, Any]) -> str:
    def num(key: str) -> str:
        return f"{row[key]:.3g}" if key in row else "-"

    elements = "-"
    if "differing_elements" in row:
        elements = f"{row['differing_elements']}/{row['compared_elements']}"
    elif row.get("result") == "identical":
        elements = "0"
    return (
        f"| {row['method']} | {row.get('result', '?')} | {num('max_abs')} | {num('max_rel')} "
        f"| {elements} | {row.get('seconds_old', '-')} | {row.get('seconds_new', '-')} "
        f"| {row.get('note', '').replace('|', '/')} |"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--old", help="the commit before the restructuring (any git revision)")
    ap.add_argument("--sets", nargs="+", default=["small"], choices=list(bench.SETS))
    ap.add_argument("--methods", nargs="+", default=["all"], help="'all' or method names")
    ap.add_argument(
        "--data",
        type=Path,
        default=REPO / "bench-data",
        help="where the sets, trees, snapshots and caches go",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="pass --threads N to every merge (default: meldkit's choice)",
    )
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per merge process")
    ap.add_argument("--keep", action="store_true", help="keep every output folder")
    ap.add_argument("--describe", metavar="SET_FOLDER", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.describe:
        return describe_main(args.describe)
    if not args.old:
        ap.error("--old REV is required")
    args.data = args.data.resolve()
    (args.data / "same_bytes").mkdir(parents=True, exist_ok=True)
    args.base_pythonpath = os.environ.get("PYTHONPATH")  # before use_sources prepends its root
    old = old_tree(args.old, args.data)
    new = new_tree(args.data)
    print(
        f"old tree: {old.ident} ({old.root}); new tree: live src/ frozen as {new.ident} "
        f"({new.root})",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    for name in args.sets:
        print(f"[{name}]", flush=True)
        set_rows = run_set(name, old, new, args)
        rows += set_rows
        report = args.data / "same_bytes" / f"report-{old.ident}-{new.ident}-{name}.json"
        report.write_text(
            json.dumps(
                {
                    "old": old.ident,
                    "new": new.ident,
                    "set": name,
                    "tolerances": TOLERANCES,
                    "rows": set_rows,
                },
                indent=1,
            )
            + "\n"
        )
        print(
            f"\n[{name}] old {old.ident} vs new {new.ident} (seconds with * include numba "
            "compiling into a fresh cache)\n"
        )
        print(HEADER + "\n" + RULE)
        print("\n".join(format_row(r) for r in set_rows))
        print(f"\nsaved {report}")
    if bench.src_digest() != new.ident:
        print(
            f"note: the live src/ changed during the run (now {bench.src_digest()}); this run "
            f"measured the snapshot {new.ident}"
        )
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["result"]] = counts.get(r["result"], 0) + 1
    order = ["identical", "within tolerance", "DIFFERENT", "FAILED", "REMOVED", "new", "skipped"]
    print(
        ", ".join(f"{counts[k]} {k}" for k in order if k in counts) + f" (of {len(rows)} methods)"
    )
    bad = {"DIFFERENT", "FAILED", "REMOVED"}
    return 1 if any(r["result"] in bad for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
