"""Profile one merge with py-spy and summarise where each thread spends its time.

    pip install py-spy
    python benchmarks/profile.py --set med --method ties            # records, then summarises
    python benchmarks/profile.py --summarise bench-data/prof/med_ties.txt

Records ``python -m meldkit merge`` on a recipe written by ``benchmarks/run.py`` (run it once
first, or pass ``--recipe``) with ``py-spy record --threads --idle --native -f raw`` and prints,
per thread, the share of samples that are idle (waiting on a queue, lock or future) and the
busiest meldkit source lines, each with the torch operator (``at::_ops::...``) or system call it
was in. The main thread computes, ``meldkit-read_0`` reads, ``meldkit-write_0`` writes.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_THREAD = re.compile(r"^thread \(\d+\): ?(.*)$")
_PY_FRAME = re.compile(r"^(?P<func>.+) \((?P<file>[^()]*\.py):(?P<line>\d+)\)$")
_OP = re.compile(r"at::_ops::(\w+)::")
_WAIT = (
    "PyThread_acquire_lock_timed",
    "_queue_SimpleQueue_get",
    "Condition.wait",
    "Event.wait",
    "Future.result",
    "take_gil",
    "pthread_cond",
)
_SYSCALLS = {
    "preadv": "preadv",
    "_pread_into": "preadv",
    "pwrite": "pwrite",
    "_pwrite_all": "pwrite",
    "fsync": "fsync",
    "_complete": "fsync",
    "ftruncate": "ftruncate",
    "open": "open",
}


def parse(path: Path) -> dict[str, list[tuple[list[str], int]]]:
    """Raw py-spy output -> {thread name: [(frames root..leaf, count)]}."""
    threads: dict[str, list[tuple[list[str], int]]] = defaultdict(list)
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        m = _THREAD.match(frames[0])
        name = (m.group(1) or "?") if m else "?"
        threads[name].append((frames[1:] if m else frames, int(count)))
    return threads


def classify(frames: list[str]) -> tuple[str, str]:
    """(state, where): state is 'idle' or 'busy'; where is 'file:line func [op]'."""
    leafward = " ".join(frames[-4:])
    last_py = None
    for f in frames:
        m = _PY_FRAME.match(f)
        if m and (
            "meldkit" in m.group("file")
            or "safetensors" in m.group("file")
            or "floor" in m.group("file")
        ):
            last_py = m
    op = None
    for f in frames:
        o = _OP.search(f)
        if o:
            op = o.group(1)
            break
    if any(w in leafward for w in _WAIT) and op is None:
        where = "waiting"
        for f in reversed(frames):
            m = _PY_FRAME.match(f)
            if m and "concurrent" not in m.group("file") and "threading" not in m.group("file"):
                where = (
                    f"waiting in {Path(m.group('file')).name}:{m.group('line')} {m.group('func')}"
                )
                break
        return "idle", where
    if last_py is None:
        return "busy", "(no meldkit frame) " + (op or frames[-1][:80] if frames else "?")
    where = f"{Path(last_py.group('file')).parent.name}/{Path(last_py.group('file')).name}:{last_py.group('line')} {last_py.group('func')}"
    if op:
        where += f" [{op}]"
    else:
        for f in reversed(frames):
            for key, label in _SYSCALLS.items():
                if f.startswith(key + " ") or f.startswith(key + "("):
                    return "busy", where + f" [{label}]"
    return "busy", where


def summarise(path: Path, top: int = 12, rate: int = 50) -> str:
    threads = parse(path)
    out = [f"profile {path} (py-spy raw, {rate} Hz; 1 sample = {1000 // rate} ms)"]
    for name, stacks in sorted(threads.items(), key=lambda kv: -sum(c for _, c in kv[1])):
        if name.startswith("tqdm"):
            continue
        total = sum(c for _, c in stacks)
        states: Counter[str] = Counter()
        places: Counter[str] = Counter()
        for frames, count in stacks:
            state, where = classify(frames)
            states[state] += count
            places[where] += count
        out.append(
            f"\n== {name}: {total} samples ({total / rate:.1f} s); "
            f"busy {states['busy'] / total:.0%}, idle {states['idle'] / total:.0%}"
        )
        for where, count in places.most_common(top):
            out.append(f"  {count / total:6.1%}  {count / rate:6.1f} s  {where}")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", default="med")
    ap.add_argument("--method", default="ties")
    ap.add_argument("--recipe", type=Path, default=None)
    ap.add_argument("--data", type=Path, default=REPO / "bench-data")
    ap.add_argument("--rate", type=int, default=50)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--summarise", type=Path, default=None, help="only summarise this raw file")
    ap.add_argument(
        "--floor", action="store_true", help="profile floor.py over the recipe's inputs instead"
    )
    args = ap.parse_args()
    if args.summarise:
        print(summarise(args.summarise, args.top, args.rate))
        return 0
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        sys.exit("py-spy is not installed: pip install py-spy")
    recipe = args.recipe or args.data / "recipes" / f"{args.set}_{args.method}.yml"
    if not recipe.is_file():
        sys.exit(f"{recipe} does not exist; run benchmarks/run.py --sets {args.set} first")
    prof = args.data / "prof"
    prof.mkdir(parents=True, exist_ok=True)
    out = args.data / "out" / f"prof_{args.set}_{args.method}"
    shutil.rmtree(out, ignore_errors=True)
    if args.floor:
        import yaml

        r = yaml.safe_load(recipe.read_text())
        inputs = ([r["base_model"]] if r.get("base_model") else []) + [
            m["model"] for m in r["models"]
        ]
        floor = REPO.parent / "shared" / "bench" / "floor.py"
        cmd = (
            [sys.executable, str(floor)]
            if floor.is_file()
            else [sys.executable, str(REPO / "benchmarks" / "reference.py"), "floor"]
        )
        cmd += [str(out)] + inputs
        raw = prof / f"{args.set}_{args.method}_floor.txt"
    else:
        cmd = [
            sys.executable,
            "-m",
            "meldkit",
            "merge",
            str(recipe),
            str(out),
            "--quiet",
            "--overwrite",
            "--seed",
            "0",
        ]
        raw = prof / f"{args.set}_{args.method}.txt"
    subprocess.run(["sync"], check=False)
    subprocess.run(
        [
            pyspy,
            "record",
            "--threads",
            "--idle",
            "--native",
            "-r",
            str(args.rate),
            "-f",
            "raw",
            "-o",
            str(raw),
            "--",
            *cmd,
        ],
        check=True,
    )
    shutil.rmtree(out, ignore_errors=True)
    print(summarise(raw, args.top, args.rate))
    return 0


if __name__ == "__main__":
    sys.exit(main())
