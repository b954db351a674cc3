"""GPU check, run on a machine with CUDA: the CUDA tests, then `med`-shaped merges on CPU and on
the GPU side by side with the I/O floor, with the outputs compared.

    PYTHONPATH=src python benchmarks/device_check.py --out RESULTS_DIR [--small]

Self-contained (needs torch, safetensors, pyyaml, tqdm; no transformers): the models come from
meldkit.testing and the floor from benchmarks/reference.py. Prints a table last and writes
device.json under --out. Each step has a deadline so a slow step cannot eat the whole lease.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
METHODS = {
    "linear": "models:\n{models}",
    "ties": "base_model: {base}\nmodels:\n{models}",
    "dare_ties": "base_model: {base}\nmodels:\n{models}",
    "della": "base_model: {base}\nmodels:\n{models}",
}


def run(argv: list[str], timeout: float) -> tuple[float, int, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), PYTHONUNBUFFERED="1")
    start = time.perf_counter()
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
        return time.perf_counter() - start, p.returncode, (p.stdout + p.stderr)[-2000:]
    except subprocess.TimeoutExpired:
        return time.perf_counter() - start, -1, "timeout"


def compare(a: Path, b: Path) -> float:
    """Largest relative difference between two merged folders (over all tensors)."""
    import torch

    from meldkit.testing import read_model

    x, y = read_model(a), read_model(b)
    worst = 0.0
    for name in x:
        d = (x[name].float() - y[name].float()).abs().max().item()
        worst = max(worst, d / max(x[name].float().abs().max().item(), 1e-12))
    del torch
    return worst


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--small", action="store_true", help="tiny models (to try the script on a CPU)")
    ap.add_argument("--budget", type=float, default=300.0, help="seconds for the whole check")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    a = ap.parse_args()
    deadline = time.perf_counter() + a.budget
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO / "src"))
    import torch

    report: dict = {
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpus": os.cpu_count(),
        "rows": [],
    }
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}), flush=True)

    if report["cuda"]:
        secs, rc, tail = run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "tests/test_methods_end_to_end.py",
                "-k",
                "cuda",
                "tests/methods/test_device.py",
            ],
            timeout=min(120, deadline - time.perf_counter()),
        )
        report["cuda_tests"] = {
            "seconds": round(secs, 1),
            "rc": rc,
            "tail": tail.strip().splitlines()[-1:],
        }
        print("cuda tests:", report["cuda_tests"], flush=True)

    from meldkit.testing import make_model_family

    data = Path("/tmp/meldkit-device-check")
    dims = (
        dict(num_layers=2, hidden=64, intermediate=128, vocab=256)
        if a.small
        else dict(num_layers=12, hidden=1536, intermediate=4096, vocab=32000, heads=24, kv_heads=6)
    )
    t = time.perf_counter()
    base, fts = make_model_family(data, "llama", n=3, dtype="bfloat16", **dims)
    report["make_seconds"] = round(time.perf_counter() - t, 1)
    models = "".join(
        f"  - {{model: {m}, parameters: {{weight: 0.33, density: 0.5}}}}\n" for m in fts
    )

    floor_s, rc, _ = run(
        [sys.executable, str(HERE / "reference.py"), "floor", "/tmp/meldkit-floor", *map(str, fts)],
        timeout=max(10, deadline - time.perf_counter()),
    )
    report["floor_seconds"] = round(floor_s, 2)
    print(f"floor {floor_s:.2f}s rc={rc}", flush=True)
    devices = ["cpu", "cuda"] if report["cuda"] else ["cpu"]
    for method in a.methods:
        body = METHODS[method]
        recipe = out / f"{method}.yml"
        recipe.write_text(
            f"merge_method: {method}\n"
            + body.format(base=base, models=models)
            + "dtype: bfloat16\n"
        )
        row: dict = {"method": method}
        for device in devices:
            left = deadline - time.perf_counter()
            if left < 15:
                row[device] = "skipped (time)"
                continue
            target = Path(f"/tmp/meldkit-dc-{method}-{device}")
            secs, rc, tail = run(
                [
                    sys.executable,
                    "-m",
                    "meldkit",
                    "merge",
                    str(recipe),
                    str(target),
                    "--device",
                    device,
                    "--quiet",
                    "--overwrite",
                    "--seed",
                    "1",
                ],
                timeout=left,
            )
            row[device] = (
                round(secs, 2)
                if rc == 0
                else f"rc={rc}: {tail.strip().splitlines()[-1:] if tail else ''}"
            )
        if all(isinstance(row.get(d), float) for d in devices) and len(devices) == 2:
            row["max_rel_diff"] = compare(
                Path(f"/tmp/meldkit-dc-{method}-cpu"), Path(f"/tmp/meldkit-dc-{method}-cuda")
            )
        report["rows"].append(row)
        print(row, flush=True)
    (out / "device.json").write_text(json.dumps(report, indent=2))
    print(
        f"\n| method | cpu s | cuda s | cpu/floor | cuda/floor | max rel diff cpu vs cuda |  (floor {floor_s:.2f} s, {report['cpus']} CPUs, {report['gpu']})"
    )
    for row in report["rows"]:
        c, g = row.get("cpu"), row.get("cuda")
        ratio = lambda v: f"{v / floor_s:.2f}" if isinstance(v, float) else "-"  # noqa: E731
        print(
            f"| {row['method']} | {c} | {g} | {ratio(c)} | {ratio(g)} | {row.get('max_rel_diff', '-')} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
