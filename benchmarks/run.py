"""meldkit performance benchmark: every method against the I/O floor, side by side, in one run.

    python benchmarks/run.py --sets small med med2x --methods all --repeat 1

What it does, in order:

1. Makes the synthetic checkpoint sets under ``--data`` (default ``bench-data/``, git-ignored)
   with ``../shared/bench/make_models.py`` (``benchmarks/reference.py make`` when the shared
   folder is absent); a set that already exists is reused.
2. Times ``meldkit --help`` and ``meldkit plan`` over three 70B-shaped header-only checkpoints
   (:func:`meldkit.testing.make_header_only_model`; sparse files, no disk blocks).
3. Compiles the kernels, untimed: one merge per method on the ``tiny`` set, so numba builds
   (and caches, next to the sources in use) every kernel the methods need; otherwise the
   first rows of a fresh checkout would time 10-30 s of compilation per kernel module.
   ``--no-compile`` skips it.
4. For each set: runs the floor (``floor.py OUT base ft1 ft2 ft3``) once to warm the page
   cache, then for each method and repeat runs the floor over *the same input models as the
   method* and then the merge (``python -m meldkit merge RECIPE OUT --quiet --overwrite``),
   alternately, each as its own process.
5. Prints a table (method, set, wall, floor, ratio, peak RSS, targets, pass/fail) and saves
   everything as JSON in ``benchmarks/results/`` (``latest.json`` and a timestamped copy);
   ``--write-doc`` also replaces the results block of ``docs/performance.md``.

Measurement: whole-process wall time (``time.perf_counter`` around spawn and exit) and peak
RSS from ``os.wait4`` (the kernel's ``ru_maxrss`` of that one child, as GNU ``time -v``
reports it). Caches: inputs stay in the page cache (warm; every set fits in RAM here);
before each timed process the previous output folder is deleted and ``sync`` is called,
outside the timed region, so no process pays for another's dirty pages. ``--cold`` drops the
page cache before every timed process instead (needs root).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import importlib.util
import json
import math
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = REPO.parent / "shared" / "bench"

# Shapes of the synthetic sets (Llama-style, bf16, base + 3 fine-tunes). small and med are the
# sizes of ../shared/bench/README.md; med2x has ~2.16x med's parameters (853M vs 396M) and a
# largest tensor 1.33x med's (32000x2048 vs 32000x1536), to show how RSS scales.
SETS: dict[str, dict[str, int]] = {
    "tiny": {"hidden": 256, "layers": 2, "inter": 704, "vocab": 4096},  # smoke test only
    "small": {"hidden": 1024, "layers": 8, "inter": 2816, "vocab": 32000},
    "med": {"hidden": 1536, "layers": 12, "inter": 4096, "vocab": 32000},
    "med2x": {"hidden": 2048, "layers": 16, "inter": 5632, "vocab": 32000},
}
N_FINETUNES = 3

# Targets from the performance issue.
RATIO_TARGET = 1.5
RATIO_TARGET_ITERATIVE = 3.0
ITERATIVE = {"karcher"}  # iterative or SVD-based methods get the looser ratio
RSS_TARGET = 1_000_000_000  # bytes, on small and med
HELP_TARGET_S = 0.3
PLAN_TARGET_S = 2.0

# Typical parameter values; each method gets the ones its spec declares.
TYPICAL: dict[str, Any] = {
    "density": 0.5,
    "gamma": 0.01,
    "epsilon": 0.1,
    "t": 0.5,
    "select_topk": 0.5,
}
OVERRIDES: dict[str, dict[str, Any]] = {
    "nearswap": {"t": 0.001},
}


# ---------------------------------------------------------------------------------------------
# Process measurement


@dataclass
class Run:
    """One timed child process."""

    label: str
    argv: list[str]
    wall_s: float = 0.0
    rss_bytes: int = 0
    user_s: float = 0.0
    sys_s: float = 0.0
    returncode: int = 0
    log: str = ""
    other_cpu_s: float = 0.0  # CPU time used by other processes on the machine meanwhile


def busy_cpu_s() -> float:
    """Machine-wide busy CPU seconds since boot (all cores), from /proc/stat; 0 if unknown."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def timed(
    label: str,
    argv: list[str],
    log: Path,
    timeout: float,
    cwd: Path = REPO,
    env: dict[str, str] | None = None,
) -> Run:
    """Run ``argv`` as one child (in ``env``, default this process's); wall time around
    spawn..exit, peak RSS from wait4."""
    run = Run(label, [str(a) for a in argv], log=str(log))
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as fh:
        busy0 = busy_cpu_s()
        start = time.perf_counter()
        proc = subprocess.Popen(run.argv, stdout=fh, stderr=subprocess.STDOUT, cwd=cwd, env=env)
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.005)
        run.wall_s = time.perf_counter() - start
        busy = busy_cpu_s() - busy0
    proc.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not wait again
    run.returncode = proc.returncode
    run.rss_bytes = usage.ru_maxrss * 1024  # kilobytes on Linux
    run.user_s, run.sys_s = usage.ru_utime, usage.ru_stime
    run.other_cpu_s = max(0.0, busy - run.user_s - run.sys_s) if busy else 0.0
    return run


def prepare(out: Path, cold: bool) -> None:
    """Outside the timed region: remove the previous output and flush dirty pages."""
    shutil.rmtree(out, ignore_errors=True)
    os.sync()
    if cold:
        drop_caches()


# ---------------------------------------------------------------------------------------------
# Data sets


def _complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def make_set(name: str, data: Path, timeout: float) -> dict[str, Any]:
    folder = data / name
    models = ["base"] + [f"ft{i}" for i in range(1, N_FINETUNES + 1)]
    if all(_complete(folder / m) for m in models):
        return {"folder": str(folder), "made": False}
    shape = SETS[name]
    script = SHARED / "make_models.py"
    argv = (
        [sys.executable, str(script)]
        if script.is_file()
        else [sys.executable, str(HERE / "reference.py"), "make"]
    )
    argv += [str(folder)] + [f"--{k}={v}" for k, v in shape.items()] + [f"--n={N_FINETUNES}"]
    print(f"making set {name} in {folder} ...", flush=True)
    run = timed(f"make {name}", argv, data / "logs" / f"make_{name}.log", timeout)
    if run.returncode != 0:
        raise SystemExit(f"making set {name} failed; see {run.log}")
    return {"folder": str(folder), "made": True, "make_s": round(run.wall_s, 1)}


def set_stats(folder: Path) -> dict[str, Any]:
    """Parameter count and largest tensor of one model of the set, from its headers."""
    numels: dict[str, int] = {}
    nbytes = 0
    for f in sorted((folder / "ft1").glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for key, entry in header.items():
            if key == "__metadata__":
                continue
            numels[key] = math.prod(entry["shape"])
            nbytes += entry["data_offsets"][1] - entry["data_offsets"][0]
    largest = max(numels, key=lambda k: numels[k])
    return {
        "params": sum(numels.values()),
        "bytes_per_model": nbytes,
        "largest_tensor": largest,
        "largest_numel": numels[largest],
    }


# ---------------------------------------------------------------------------------------------
# Recipes


def _impl_present(spec: Any) -> bool:
    module = spec.impl.partition(":")[0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def choose_inputs(spec: Any) -> tuple[bool, int] | str:
    """(use a base, number of non-base models) within the method's contract, or why not."""
    one_input = spec.max_inputs == 1
    use_base = spec.base == "required" or (spec.base == "optional" and not one_input)
    n = N_FINETUNES
    if spec.max_non_base is not None:
        n = min(n, spec.max_non_base)
    if spec.max_inputs is not None:
        n = min(n, spec.max_inputs - int(use_base))
    if n < spec.min_non_base or n + int(use_base) < spec.min_inputs or n < 1:
        return f"cannot fit base+{N_FINETUNES} into its contract"
    return use_base, n


def make_recipe(spec: Any, folder: Path) -> tuple[dict[str, Any], list[Path]] | str:
    """A recipe for ``spec`` over the set in ``folder`` and the input folders it reads."""
    chosen = choose_inputs(spec)
    if isinstance(chosen, str):
        return chosen
    use_base, n = chosen
    values = {**TYPICAL, **OVERRIDES.get(spec.name, {})}
    model_params: dict[str, Any] = {}
    shared: dict[str, Any] = {}
    for p in spec.params:
        if p.name == "weight":
            value: Any = round(1.0 / n, 4) if spec.name != "linear" else 1.0
        elif p.name in values:
            value = values[p.name]
        elif p.required:
            return f"required parameter '{p.name}' has no typical value in benchmarks/run.py"
        else:
            continue
        (model_params if p.scope in ("per_input", "per_non_base") else shared)[p.name] = value
    fts = [folder / f"ft{i}" for i in range(1, n + 1)]
    recipe: dict[str, Any] = {"merge_method": spec.name, "dtype": "bfloat16"}
    if use_base:
        recipe["base_model"] = str(folder / "base")
    recipe["models"] = [
        {"model": str(f), **({"parameters": dict(model_params)} if model_params else {})}
        for f in fts
    ]
    if shared:
        recipe["parameters"] = shared
    inputs = ([folder / "base"] if use_base else []) + fts
    return recipe, inputs


def write_yaml(path: Path, recipe: dict[str, Any]) -> None:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")


def select_methods(wanted: list[str]) -> tuple[list[Any], list[dict[str, str]]]:
    from meldkit.methods.registry import list_methods

    specs = {s.name: s for s in list_methods()}
    names = sorted(specs) if wanted in (["all"], []) else wanted
    chosen, skipped = [], []
    for name in names:
        spec = specs.get(name)
        if spec is None:
            skipped.append({"method": name, "why": "not registered"})
        elif not _impl_present(spec):
            skipped.append({"method": name, "why": f"no math module yet ({spec.impl})"})
        else:
            chosen.append(spec)
    return chosen, skipped


# ---------------------------------------------------------------------------------------------
# CLI latency


def meldkit_exe() -> list[str]:
    exe = Path(sys.executable).parent / "meldkit"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "meldkit"]


def cli_latency(data: Path, repeat: int, timeout: float) -> dict[str, Any]:
    logs = data / "logs"
    help_runs = [
        timed("help", meldkit_exe() + ["--help"], logs / "help.log", timeout) for _ in range(repeat)
    ]
    folder = data / "h70b"
    names = ["m1", "m2", "m3"]
    if not all((folder / n / "config.json").is_file() for n in names):
        code = (
            "import sys; from meldkit.testing import make_header_only_model as m; "
            "[m(p) for p in sys.argv[1:]]"
        )
        made = timed(
            "make h70b",
            [sys.executable, "-c", code] + [str(folder / n) for n in names],
            logs / "make_h70b.log",
            timeout,
        )
        if made.returncode:
            raise SystemExit(f"make_header_only_model failed; see {made.log}")
    recipes = {
        "linear": {
            "merge_method": "linear",
            "dtype": "bfloat16",
            "models": [{"model": str(folder / n), "parameters": {"weight": 1.0}} for n in names],
        },
        "ties": {
            "merge_method": "ties",
            "dtype": "bfloat16",
            "base_model": str(folder / "m1"),
            "models": [
                {"model": str(folder / n), "parameters": {"weight": 0.5, "density": 0.5}}
                for n in names[1:]
            ],
        },
    }
    result: dict[str, Any] = {
        "help_s": [round(r.wall_s, 3) for r in help_runs],
        "help_rc": max(r.returncode for r in help_runs),
        "plan": {},
    }
    for key, recipe in recipes.items():
        path = data / "recipes" / f"h70b_{key}.yml"
        write_yaml(path, recipe)
        runs = [
            timed(
                f"plan {key}",
                meldkit_exe() + ["plan", str(path)],
                logs / f"plan_{key}.log",
                timeout,
            )
            for _ in range(repeat)
        ]
        result["plan"][key] = {
            "wall_s": [round(r.wall_s, 3) for r in runs],
            "rss_mb": round(max(r.rss_bytes for r in runs) / 1e6, 1),
            "rc": max(r.returncode for r in runs),
            "log": runs[-1].log,
        }
    return result


# ---------------------------------------------------------------------------------------------
# The merge runs


@dataclass
class Row:
    method: str
    set: str
    inputs: str
    wall_s: list[float] = field(default_factory=list)
    floor_s: list[float] = field(default_factory=list)
    rss_bytes: list[int] = field(default_factory=list)
    floor_rss_bytes: list[int] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    floor_cpu_s: list[float] = field(default_factory=list)
    other_load: list[float] = field(default_factory=list)  # other processes' cores, method run
    floor_other_load: list[float] = field(default_factory=list)
    returncode: int = 0
    error: str = ""

    @property
    def wall(self) -> float:
        return statistics.median(self.wall_s) if self.wall_s else float("nan")

    @property
    def floor(self) -> float:
        return statistics.median(self.floor_s) if self.floor_s else float("nan")

    @property
    def ratio(self) -> float:
        return self.wall / self.floor if self.floor_s and self.wall_s else float("nan")

    @property
    def rss(self) -> int:
        return max(self.rss_bytes) if self.rss_bytes else 0

    @property
    def ratio_target(self) -> float:
        return RATIO_TARGET_ITERATIVE if self.method in ITERATIVE else RATIO_TARGET

    def verdict(self) -> dict[str, Any]:
        if self.returncode:
            return {"time_ok": False, "rss_ok": False, "pass": False}
        time_ok = self.ratio <= self.ratio_target
        rss_ok = self.rss <= RSS_TARGET if self.set in ("small", "med", "tiny") else None
        return {"time_ok": time_ok, "rss_ok": rss_ok, "pass": time_ok and rss_ok is not False}


def floor_argv(out: Path, inputs: list[Path]) -> list[str]:
    script = SHARED / "floor.py"
    head = (
        [sys.executable, str(script)]
        if script.is_file()
        else [sys.executable, str(HERE / "reference.py"), "floor"]
    )
    return head + [str(out)] + [str(p) for p in inputs]


def merge_argv(spec: Any, recipe: Path, out: Path) -> list[str]:
    """The merge as every timed row runs it."""
    return [
        sys.executable,
        "-m",
        "meldkit",
        "merge",
        str(recipe),
        str(out),
        "--quiet",
        "--overwrite",
    ] + (["--seed", "0"] if spec.randomized else [])


def compile_kernels(data: Path, specs: list[Any], timeout: float) -> float:
    """Untimed: one merge of each method on the ``tiny`` set, so that numba has compiled and
    cached every kernel before anything is timed. Returns the seconds it took."""
    make_set("tiny", data, timeout)
    outs = data / "out" / "compile"
    outs.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for spec in specs:
        made = make_recipe(spec, data / "tiny")
        if isinstance(made, str):
            continue
        path = data / "recipes" / f"compile_{spec.name}.yml"
        write_yaml(path, made[0])
        prepare(outs / spec.name, False)
        run = timed(
            f"compile {spec.name}",
            merge_argv(spec, path, outs / spec.name),
            data / "logs" / "compile" / f"{spec.name}.log",
            timeout,
        )
        if run.returncode:  # the timed row will fail the same way and report it
            print(f"compiling for {spec.name} failed; see {run.log}", flush=True)
    shutil.rmtree(outs, ignore_errors=True)
    return time.perf_counter() - start


def bench_set(name: str, data: Path, specs: list[Any], args: argparse.Namespace) -> list[Row]:
    folder = data / name
    outs = data / "out" / name
    logs = data / "logs" / name
    rows: list[Row] = []
    warm_inputs = [folder / "base"] + [folder / f"ft{i}" for i in range(1, N_FINETUNES + 1)]
    prepare(outs / "floor", False)
    warm = timed("warm", floor_argv(outs / "floor", warm_inputs), logs / "warm.log", args.timeout)
    print(f"[{name}] warm-up floor over base+{N_FINETUNES}: {warm.wall_s:.1f} s", flush=True)
    for spec in specs:
        made = make_recipe(spec, folder)
        if isinstance(made, str):
            rows.append(Row(spec.name, name, "-", returncode=-1, error=made))
            continue
        recipe, inputs = made
        path = data / "recipes" / f"{name}_{spec.name}.yml"
        write_yaml(path, recipe)
        label = ("base+" if "base_model" in recipe else "") + str(len(recipe["models"]))
        row = Row(spec.name, name, label)
        for r in range(args.repeat):
            prepare(outs / "floor", args.cold)
            fl = timed(
                "floor",
                floor_argv(outs / "floor", inputs),
                logs / f"floor_{spec.name}_{r}.log",
                args.timeout,
            )
            prepare(outs / spec.name, args.cold)
            run = timed(
                spec.name,
                merge_argv(spec, path, outs / spec.name),
                logs / f"{spec.name}_{r}.log",
                args.timeout,
            )
            if fl.returncode:
                row.returncode, row.error = fl.returncode, f"floor failed; see {fl.log}"
            if run.returncode:
                row.returncode = run.returncode
                tail = Path(run.log).read_text(errors="replace").strip().splitlines()[-3:]
                row.error = " | ".join(tail)[:300] + f" (log: {run.log})"
            row.floor_s.append(round(fl.wall_s, 3))
            row.floor_rss_bytes.append(fl.rss_bytes)
            row.floor_cpu_s.append(round(fl.user_s + fl.sys_s, 2))
            row.wall_s.append(round(run.wall_s, 3))
            row.rss_bytes.append(run.rss_bytes)
            row.cpu_s.append(round(run.user_s + run.sys_s, 2))
            row.other_load.append(round(run.other_cpu_s / max(run.wall_s, 1e-9), 2))
            row.floor_other_load.append(round(fl.other_cpu_s / max(fl.wall_s, 1e-9), 2))
            if run.returncode:
                break
        shutil.rmtree(outs / spec.name, ignore_errors=True)
        print(format_row(row), flush=True)
        rows.append(row)
    shutil.rmtree(outs, ignore_errors=True)
    return rows


# ---------------------------------------------------------------------------------------------
# Reporting

HEADER = (
    "| method | set | inputs | wall s | floor s | ratio | target | peak RSS MB | floor RSS MB | "
    "CPU s method/floor | other load | result |"
)
RULE = "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"


def format_row(row: Row) -> str:
    if row.returncode and not row.wall_s:
        return f"| {row.method} | {row.set} | {row.inputs} | - | - | - | - | - | - | - | - | skipped: {row.error} |"
    v = row.verdict()
    if row.returncode:
        result = f"FAIL (exit {row.returncode}: {row.error})"
    else:
        bits = ["time ok" if v["time_ok"] else "time FAIL"]
        if v["rss_ok"] is not None:
            bits.append("RSS ok" if v["rss_ok"] else "RSS FAIL")
        result = ("PASS" if v["pass"] else "FAIL") + " (" + ", ".join(bits) + ")"
    floor_rss = max(row.floor_rss_bytes) / 1e6 if row.floor_rss_bytes else 0
    cpu = statistics.median(row.cpu_s) if row.cpu_s else 0
    floor_cpu = statistics.median(row.floor_cpu_s) if row.floor_cpu_s else 0
    load = max(row.other_load + row.floor_other_load, default=0)
    rss_target = " / ≤1000 MB" if row.set in ("small", "med", "tiny") else ""
    return (
        f"| {row.method} | {row.set} | {row.inputs} | {row.wall:.1f} | {row.floor:.1f} | "
        f"{row.ratio:.2f} | ≤{row.ratio_target:g}{rss_target} | {row.rss / 1e6:.0f} | {floor_rss:.0f} | "
        f"{cpu:.1f}/{floor_cpu:.1f} | {load:.1f} | {result} |"
    )


def scaling_table(rows: list[Row], stats: dict[str, dict[str, Any]]) -> list[str]:
    """Peak RSS per method across the sets, against model size and largest-tensor size."""
    order = [s for s in SETS if s in stats]
    if len(order) < 2:
        return []
    by = {(r.method, r.set): r for r in rows if r.rss_bytes and not r.returncode}
    lines = [
        "| method | " + " | ".join(f"RSS {s} MB" for s in order) + " | growth "
        f"{order[-2]}→{order[-1]} MB | largest-tensor working-set growth MB | growth within it |",
        "|---|" + "---:|" * len(order) + "---:|---:|---|",
    ]
    a, b = stats[order[-2]], stats[order[-1]]
    methods = sorted({r.method for r in rows})
    for m in methods:
        if not all((m, s) in by for s in order):
            continue
        n_inputs = sum(int(x) for x in by[(m, order[-1])].inputs.replace("base+", "1+").split("+"))
        grow = (by[(m, order[-1])].rss - by[(m, order[-2])].rss) / 1e6
        budget = working_set(b["largest_numel"], n_inputs) - working_set(
            a["largest_numel"], n_inputs
        )
        lines.append(
            f"| {m} | "
            + " | ".join(f"{by[(m, s)].rss / 1e6:.0f}" for s in order)
            + f" | {grow:.0f} | {budget / 1e6:.0f} | {'yes' if grow <= budget / 1e6 else 'NO'} |"
        )
    return lines


def working_set(numel: int, n_inputs: int) -> int:
    """Bytes the engine may hold for the largest tensor: the inputs, the result and one scratch
    tensor in float32, plus the bf16 read buffers of that tensor and the two prefetched ones."""
    return numel * (4 * (n_inputs + 2) + 2 * n_inputs * 3)


def _short(path: Path) -> str:
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def use_sources(data: Path, snapshot: bool) -> Path:
    """Make this process and every child import meldkit from a frozen copy of src/meldkit
    (``snapshot``), so edits made to the tree during a long run do not mix versions; or from
    the live src/. Returns the folder put first on PYTHONPATH."""
    root = REPO / "src"
    if snapshot:
        root = data / "snapshots" / src_digest()
        if not (root / "meldkit").is_dir():
            tmp = root.with_name(root.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(
                REPO / "src" / "meldkit",
                tmp / "meldkit",
                ignore=shutil.ignore_patterns("__pycache__"),
            )
            tmp.rename(root)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(root)] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    )
    sys.path.insert(0, str(root))
    return root


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    try:
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        info["ram_gib"] = round(int(meminfo[0].split()[1]) / 2**20, 1)
        cpu = [
            ln
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ]
        info["cpu"] = cpu[0].split(":", 1)[1].strip() if cpu else platform.processor()
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        # torch's default in a fresh process; meldkit may choose fewer (see docs/performance.md)
        info["torch_default_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    try:
        info["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        info["src_modified"] = bool(dirty.strip())
    except OSError:
        pass
    info["src_sha256"] = src_digest()
    return info


def src_digest() -> str:
    """A hash of src/meldkit/**/*.py: the tree is edited while benchmarks run, so this names
    the exact sources measured (compared at the start and the end of a run)."""
    digest = hashlib.sha256()
    for f in sorted((REPO / "src" / "meldkit").rglob("*.py")):
        digest.update(f.relative_to(REPO).as_posix().encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()[:12]


def render_markdown(report: dict[str, Any], rows: list[Row]) -> str:
    m = report["machine"]
    out = [
        f"Measured {report['started']} with `{report['command']}`",
        "",
        f"Machine: {m.get('nproc')} CPUs ({m.get('cpu', '?')}), {m.get('ram_gib', '?')} GiB RAM, "
        f"{report['disk_free_gb']} GB free on the data disk; Python {m.get('python')}, "
        f"torch {m.get('torch')}; meldkit at {m.get('commit')}"
        + (" with uncommitted changes under src/" if m.get("src_modified") else "")
        + f" (sources sha256 {m.get('src_sha256')}"
        + (
            f", frozen in {_short(Path(report['sources']))}"
            if "snapshots" in report.get("sources", "")
            else ""
        )
        + (
            f"; the live tree changed to {report['src_sha256_end']} during the run"
            if report.get("src_sha256_end", m.get("src_sha256")) != m.get("src_sha256")
            else ""
        )
        + ").",
        f"Caches: {report['cache_policy']}",
        "",
        HEADER,
        RULE,
    ]
    out += [format_row(r) for r in rows]
    if report.get("skipped"):
        out += [
            "",
            "Not run: " + "; ".join(f"{s['method']} ({s['why']})" for s in report["skipped"]) + ".",
        ]
    scaling = scaling_table(rows, report["sets"])
    if scaling:
        out += [
            "",
            "Peak RSS across sets (the last columns compare the RSS growth between the two "
            "largest sets with the growth of the largest tensor's working set, see "
            "`working_set` in benchmarks/run.py; the absolute level is what the 1 GB target checks):",
            "",
        ] + scaling
    cli = report.get("cli")
    if cli:
        h = statistics.median(cli["help_s"])
        out += [
            "",
            "| command | wall s (median) | target | result |",
            "|---|---:|---:|---|",
            f"| `meldkit --help` | {h:.3f} | <{HELP_TARGET_S} | {'PASS' if h < HELP_TARGET_S and not cli['help_rc'] else 'FAIL'} |",
        ]
        for key, p in cli["plan"].items():
            w = statistics.median(p["wall_s"])
            ok = w < PLAN_TARGET_S and not p["rc"]
            out.append(
                f"| `meldkit plan` {key} over three 70B-shaped header-only checkpoints | {w:.3f} | "
                f"<{PLAN_TARGET_S:g} | {'PASS' if ok else 'FAIL'} |"
            )
    return "\n".join(out) + "\n"


def write_doc(markdown: str) -> None:
    doc = REPO / "docs" / "performance.md"
    begin, end = "<!-- results:begin -->", "<!-- results:end -->"
    text = (
        doc.read_text(encoding="utf-8") if doc.is_file() else f"# Performance\n\n{begin}\n{end}\n"
    )
    if begin not in text or end not in text:
        text += f"\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{begin}\n{markdown}{end}{tail}", encoding="utf-8")


def rerender(path: Path, doc: bool) -> int:
    report = json.loads(path.read_text(encoding="utf-8"))
    names = set(Row.__dataclass_fields__)
    rows = [Row(**{k: v for k, v in r.items() if k in names}) for r in report["rows"]]
    markdown = render_markdown(report, rows)
    print(markdown)
    if doc:
        write_doc(markdown)
        print("updated docs/performance.md")
    return 0


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sets", nargs="+", default=["small", "med"], choices=list(SETS))
    ap.add_argument("--methods", nargs="+", default=["all"], help="'all' or method names")
    ap.add_argument("--repeat", type=int, default=1, help="floor/method pairs per method (median)")
    ap.add_argument(
        "--data", type=Path, default=REPO / "bench-data", help="where sets and outputs go"
    )
    ap.add_argument("--results", type=Path, default=HERE / "results")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per process")
    ap.add_argument(
        "--cold", action="store_true", help="drop the page cache before each timed run (root)"
    )
    ap.add_argument("--no-cli", action="store_true", help="skip the --help / plan latency checks")
    ap.add_argument(
        "--no-compile",
        action="store_true",
        help="skip the untimed merges on `tiny` that compile the numba kernels first",
    )
    ap.add_argument(
        "--write-doc", action="store_true", help="update the results block of docs/performance.md"
    )
    ap.add_argument(
        "--no-snapshot",
        dest="snapshot",
        action="store_false",
        help="run the live src/ tree instead of a frozen copy of it",
    )
    ap.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="run nothing: re-render a saved results JSON (with --write-doc, into the doc)",
    )
    args = ap.parse_args(argv)
    if args.from_json:
        return rerender(args.from_json, args.write_doc)
    if args.cold and not drop_caches():
        ap.error("--cold needs write access to /proc/sys/vm/drop_caches")
    args.data = args.data.resolve()
    args.data.mkdir(parents=True, exist_ok=True)
    src = use_sources(args.data, args.snapshot)
    command = "python benchmarks/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report: dict[str, Any] = {
        "started": _dt.datetime.now().isoformat(timespec="seconds"),
        "command": command,
        "machine": machine(),
        "disk_free_gb": round(shutil.disk_usage(args.data).free / 1e9, 1),
        "sources": str(src),
        "cache_policy": (
            "page cache dropped before every timed process"
            if args.cold
            else "warm: one untimed floor over base+3 reads every input into the page cache; "
            "then floor and method alternate; outputs deleted and `sync` run between "
            "processes, untimed"
        ),
        "targets": {
            "ratio": RATIO_TARGET,
            "ratio_iterative": RATIO_TARGET_ITERATIVE,
            "iterative": sorted(ITERATIVE),
            "rss_bytes": RSS_TARGET,
            "help_s": HELP_TARGET_S,
            "plan_s": PLAN_TARGET_S,
        },
        "sets": {},
    }
    specs, skipped = select_methods(args.methods)
    report["skipped"] = skipped
    for s in skipped:
        print(f"skipping {s['method']}: {s['why']}")
    for name in args.sets:
        made = make_set(name, args.data, args.timeout)
        report["sets"][name] = {**SETS[name], **made, **set_stats(args.data / name)}
    if not args.no_cli:
        report["cli"] = cli_latency(args.data, 5, args.timeout)
        print(
            f"meldkit --help: {statistics.median(report['cli']['help_s']):.3f} s; plan 3x70B: "
            + ", ".join(
                f"{k} {statistics.median(v['wall_s']):.3f} s"
                for k, v in report["cli"]["plan"].items()
            ),
            flush=True,
        )
    if not args.no_compile:
        report["compile_s"] = round(compile_kernels(args.data, specs, args.timeout), 1)
        print(f"kernels compiled (untimed merges on tiny): {report['compile_s']} s", flush=True)
    print(HEADER + "\n" + RULE, flush=True)
    rows: list[Row] = []
    for name in args.sets:
        rows += bench_set(name, args.data, specs, args)
    report["rows"] = [
        {
            **asdict(r),
            "wall_median_s": r.wall,
            "floor_median_s": r.floor,
            "ratio": r.ratio,
            "peak_rss_bytes": r.rss,
            "ratio_target": r.ratio_target,
            **r.verdict(),
        }
        for r in rows
    ]
    report["src_sha256_end"] = src_digest()
    markdown = render_markdown(report, rows)
    report["markdown"] = markdown
    args.results.mkdir(parents=True, exist_ok=True)
    stamp = report["started"].replace(":", "").replace("-", "")
    for path in (args.results / f"run-{stamp}.json", args.results / "latest.json"):
        path.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    print()
    print(markdown)
    print(f"saved {args.results / 'latest.json'}")
    if args.write_doc:
        write_doc(markdown)
        print("updated docs/performance.md")
    failed = [r for r in rows if r.wall_s and not r.verdict()["pass"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
