"""Where a merge's peak RSS comes from: RSS over time, attributed to the tensor being computed.

    python benchmarks/memtrace.py bench-data/recipes/med_ties.yml [--interval 0.005]

Runs the merge in this process (``meldkit.run_merge``), samples the resident set from
/proc/self/statm every ``--interval`` seconds in a thread, and wraps the engine's
``pipeline.compute_tensor`` to know which tensor (or block of rows) is being computed. Prints the RSS
after imports, the peak and the tensor it happened in, and the tensors with the highest RSS.
Linux only. Saves nothing; the output folder is a temporary directory.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("recipe", type=Path)
    ap.add_argument("--interval", type=float, default=0.005)
    ap.add_argument("--top", type=int, default=8)
    a = ap.parse_args()

    start_rss = rss()
    import torch  # noqa: F401  (measured separately: the cost of importing torch)

    import meldkit
    import meldkit.execute.pipeline as pipeline

    after_import = rss()
    current: dict[str, Any] = {"name": "(planning / setup)"}
    per_tensor: dict[str, int] = {}
    sizes: dict[str, int] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            value = rss()
            name = current["name"]
            if value > per_tensor.get(name, 0):
                per_tensor[name] = value
            stop.wait(a.interval)

    original = pipeline.compute_tensor

    def traced(tensor: Any, raw: Any, *args: Any, **kwargs: Any) -> Any:
        rows = args[3] if len(args) > 3 else kwargs.get("rows")
        name = tensor.name + (f"[{rows[0]}:{rows[1]}]" if rows else "")
        sizes[name] = math.prod(tensor.shape)
        current["name"] = name
        try:
            return original(tensor, raw, *args, **kwargs)
        finally:
            current["name"] = f"(after {name}: writing / reading ahead)"

    pipeline.compute_tensor = traced  # type: ignore[assignment]
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=Path(a.recipe).resolve().parent.parent) as tmp:
        meldkit.run_merge(str(a.recipe), Path(tmp) / "out", quiet=True, seed=0, overwrite=True)
    wall = time.perf_counter() - began
    stop.set()
    sampler.join()
    peak_name = max(per_tensor, key=lambda k: per_tensor[k])
    print(
        f"RSS at start {start_rss / 1e6:.0f} MB, after importing torch and meldkit {after_import / 1e6:.0f} MB"
    )
    print(
        f"merge {wall:.1f} s in-process; sampled peak {per_tensor[peak_name] / 1e6:.0f} MB while computing {peak_name}"
    )
    print(f"top {a.top} by RSS while computing (MB; tensor elements):")
    for name in sorted(per_tensor, key=lambda k: -per_tensor[k])[: a.top]:
        n = sizes.get(name)
        print(
            f"  {per_tensor[name] / 1e6:7.0f}  {name}"
            + (f"  ({n:,} elements, {n * 4 / 1e6:.0f} MB in fp32)" if n else "")
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
