"""What ``meldkit plan`` shows for a multi-stage recipe: one plan for the whole chain.

Each stage in the order it runs, with its own plan summary (inputs named by stage where they
are intermediates), whether it is merged, reused from the cache or streamed, and the chain's
totals: bytes read and written, peak memory and a time estimate. Torch-free.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from meldkit.io.sizes import format_size
from meldkit.multi.chain import ChainPlan, StagePlan
from meldkit.plan.summary import describe_parameters, describe_plan

__all__ = ["describe_chain", "chain_to_dict", "ASSUMED_IO_BYTES_PER_SECOND"]

#: The disk throughput the time estimate assumes (reading and writing together). The math is
#: not counted: for most methods the engine keeps it under the I/O time.
ASSUMED_IO_BYTES_PER_SECOND = 500_000_000


def _streamed_folders(chain: ChainPlan) -> set[Path]:
    return {chain.skeleton(sp.stage.label) for sp in chain.stages if sp.streamed}


def stage_bytes_read(sp: StagePlan, chain: ChainPlan) -> int:
    """Bytes ``sp`` reads from disk (each stored tensor once): a streamed input is not read."""
    if sp.cached:
        return 0
    streamed = _streamed_folders(chain)
    seen: dict[tuple[Path, int], int] = {}
    for t in sp.plan.tensors:
        for s in t.sources:
            for info in [p for group in s.parts for p in group] or [s.info]:
                if info.file.parent not in streamed:
                    seen[(info.file, info.start)] = info.nbytes
    return sum(seen.values())


def stage_bytes_written(sp: StagePlan) -> int:
    return 0 if (sp.cached or sp.streamed) else sp.plan.bytes_to_write


def stage_peak(sp: StagePlan, chain: ChainPlan) -> int:
    """Peak memory of running ``sp``: its own working set, plus that of every streamed stage
    it reads (each merges one tensor while ``sp`` waits for it), transitively."""
    if sp.cached:
        return 0
    total = sp.plan.peak_memory_estimate
    for n in sp.stage.needs:
        up = chain.stage(n)
        if up.streamed:
            total += stage_peak(up, chain)
    return total


def _state(sp: StagePlan, chain: ChainPlan) -> str:
    if sp.cached:
        return "cached: reused"
    if sp.streamed:
        readers = [c.stage.label for c in chain.stages if sp.stage.label in c.stage.needs]
        return f"streamed into {', '.join(readers)} (not written)"
    return "to merge"


def _labelled(text: str, chain: ChainPlan) -> str:
    for path, name in sorted(chain.labels().items(), key=lambda kv: -len(kv[0])):
        text = text.replace(path, f"<{name}>")
    return text


def chain_totals(chain: ChainPlan) -> dict[str, float]:
    """Bytes read and written, peak memory and estimated seconds of the whole chain."""
    read = sum(stage_bytes_read(sp, chain) for sp in chain.stages)
    written = sum(stage_bytes_written(sp) for sp in chain.stages)
    peak = max((stage_peak(sp, chain) for sp in chain.stages if not sp.streamed), default=0)
    seconds = (read + written) / ASSUMED_IO_BYTES_PER_SECOND
    return {
        "bytes_to_read": read,
        "bytes_to_write": written,
        "peak_memory": peak,
        "seconds": seconds,
    }


def _duration(seconds: float) -> str:
    if seconds < 1:
        return "under 1 s"
    return f"about {seconds:.0f} s" if seconds < 120 else f"about {seconds / 60:.0f} min"


def describe_chain(
    chain: ChainPlan, list_tensors: bool = False, params: bool = False, outputs: bool = True
) -> str:
    """The chain's plan as ``meldkit plan`` prints it; without ``outputs`` (no intermediate
    folder was given) a stage's destination is shown as ``<intermediate-dir>/<name>``."""
    n = len(chain.stages)
    lines = [f"multi-stage recipe: {n} stages ({chain.graph.source})"]
    for i, sp in enumerate(chain.stages, 1):
        name = f"'{sp.stage.name}'" if sp.stage.name is not None else "final"
        where = (
            sp.output if outputs or sp.stage.name is None else f"<intermediate-dir>/{sp.stage.name}"
        )
        lines.append(f"stage {i}/{n} {name} -> {where} [{_state(sp, chain)}]")
        if sp.note:
            lines.append(f"  note: {sp.note}")
        body = describe_plan(sp.plan, list_tensors)
        if params:
            body += "\n" + describe_parameters(sp.plan)
        lines.extend("  " + line for line in _labelled(body, chain).splitlines())
    totals = chain_totals(chain)
    merged = sum(1 for sp in chain.stages if not sp.cached and not sp.streamed)
    streamed = sum(1 for sp in chain.stages if sp.streamed)
    cached = sum(1 for sp in chain.stages if sp.cached)
    lines.append(
        f"chain: {merged} stage{'s' if merged != 1 else ''} to merge, {streamed} streamed, "
        f"{cached} cached"
    )
    lines.append(f"  bytes to read: {format_size(totals['bytes_to_read'])}")
    lines.append(f"  bytes to write: {format_size(totals['bytes_to_write'])}")
    lines.append(f"  estimated peak memory: {format_size(totals['peak_memory'])}")
    io_rate = format_size(ASSUMED_IO_BYTES_PER_SECOND)
    lines.append(
        f"  estimated time: {_duration(totals['seconds'])} (disk I/O at {io_rate}/s; math not counted)"
    )
    return "\n".join(lines)


def chain_to_dict(chain: ChainPlan) -> dict[str, Any]:
    """The chain's plan as JSON-ready data: each stage's plan and the totals."""
    stages = []
    for sp in chain.stages:
        stages.append(
            {
                "name": sp.stage.name,
                "output": str(sp.output),
                "needs": list(sp.stage.needs),
                "cached": sp.cached,
                "streamed": sp.streamed,
                "note": sp.note,
                "key": sp.key,
                "bytes_to_read": stage_bytes_read(sp, chain),
                "bytes_to_write": stage_bytes_written(sp),
                "peak_memory": stage_peak(sp, chain),
                "plan": sp.plan.to_dict(),
            }
        )
    doc = {"stages": stages, "totals": chain_totals(chain), "warnings": list(chain.warnings)}
    # The skeletons' temporary paths mean nothing after planning: each becomes <stage name>.
    return json.loads(_labelled(json.dumps(doc), chain))  # type: ignore[no-any-return]
