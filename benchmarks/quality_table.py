"""Markdown tables of ``quality.py``'s results, and their block in ``docs/methods.md``."""

from __future__ import annotations

import re
from typing import Any

BEGIN, END = "<!-- quality:begin -->", "<!-- quality:end -->"
TASKS = ("rev", "srt", "sft", "dup")


def _params(p: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in p.items()) or "defaults"


def summary_table(rows: list[dict[str, Any]]) -> str:
    """Per method: its best sweep point and its default point on each set."""
    sets = sorted({r["set"] for r in rows if r["method"] != "fine-tune"})
    methods: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for r in rows:
        if r["method"] != "fine-tune":
            # A modifier row (LiNeS, norm_match over a method) is its own line, not a sweep
            # point of the method it modifies.
            key = r["name"] if r.get("family") == "modifier" else r["method"]
            methods.setdefault(key, {}).setdefault(r["set"], []).append(r)
    head = ["method", "family"] + [f"best {s}" for s in sets] + [f"default {s}" for s in sets]
    head += ["best point (first set)", "points"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = sorted(
        methods, key=lambda m: -max(r["norm"] for r in methods[m].get(sets[0], [{"norm": 0}]))
    )
    for m in order:
        per = methods[m]
        family = next(iter(per.values()))[0].get("family", "")
        best = [max((r["norm"] for r in per.get(s, [])), default=None) for s in sets]
        defaults = [
            next((r["norm"] for r in per.get(s, []) if r.get("default")), None) for s in sets
        ]
        first = per.get(sets[0], [])
        top = max(first, key=lambda r: r["norm"]) if first else None
        cells = [m, family] + [_num(x) for x in best] + [_num(x) for x in defaults]
        cells += [f"{top['name']} ({_params(top['params'])})" if top else "", str(len(first))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sweep_table(rows: list[dict[str, Any]], set_name: str) -> str:
    """Every row of one set: per-task accuracy, norm and merge time."""
    head = ["row", "method", "parameters", *TASKS, "norm", "merge s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r["set"] != set_name:
            continue
        name = f"**{r['name']}**" if r.get("default") else r["name"]
        cells = [name, r["method"], _params(r.get("params", {}))]
        cells += [f"{r[t]:.3f}" for t in TASKS] + [f"{r['norm']:.3f}", _num(r.get("merge_s"), 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _num(x: float | None, digits: int = 3) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def render_doc(text: str, payload: dict[str, Any]) -> str:
    """``text`` with its quality block replaced (appended when it has none)."""
    rows = payload["rows"]
    sets = sorted({r["set"] for r in rows})
    parts = [
        BEGIN,
        f"Measured with `python benchmarks/quality.py --write-doc` ({payload['n']} prompts per "
        "task; norm = mean over tasks of the merge's accuracy / the task's fine-tune's own "
        "accuracy; bold rows are the method's default parameters).",
        "",
        summary_table(rows),
    ]
    for s in sets:
        parts += ["", f"#### Every sweep point, {s} models", "", sweep_table(rows, s)]
    parts.append(END)
    block = "\n".join(parts)
    if BEGIN in text:
        return re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _m: block, text, flags=re.S)
    return text.rstrip("\n") + "\n\n" + block + "\n"
