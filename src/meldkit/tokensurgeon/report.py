"""How well each approximation method recovers rows MODEL really has.

A seeded sample of shared tokens is held out of the dictionary; each method approximates them
from the remaining shared tokens exactly as it would a new token, and the result is compared
with MODEL's true row (cosine similarity, mean and minimum over the sample), for the
embedding and the untied output projection. A user picks a method from this table.
"""

from __future__ import annotations

from typing import Any

import torch

from meldkit.tokensurgeon.approximate import Combination
from meldkit.tokensurgeon.options import APPROXIMATIONS, SurgeonOptions
from meldkit.tokensurgeon.plan import SurgeryPlan
from meldkit.tokensurgeon.rows import Matrices, RebuiltRows, approximate

__all__ = ["evaluate_methods", "format_report", "held_out_count"]


def held_out_count(shared: int) -> int:
    """Tokens held out: a tenth of the shared ones, between 1 and 512."""
    return max(1, min(512, shared // 10))


def evaluate_methods(
    plan: SurgeryPlan,
    mats: Matrices,
    rebuilt: RebuiltRows,
    options: SurgeonOptions,
    methods: tuple[str, ...] = APPROXIMATIONS,
) -> dict[str, Any]:
    """Held-out cosine similarity per method and matrix; returns a JSON-ready dict."""
    result: dict[str, Any] = {"methods": {}, "held_out": 0, "seed": options.seed}
    cache: dict[tuple[object, ...], Combination] = {}
    for matrix, assignment in rebuilt.assignments.items():
        donor_ids = [i for i in assignment.ids("exact") if i not in mats.bad_donor]
        if len(donor_ids) < 2:
            continue
        gen = torch.Generator().manual_seed(int(options.seed) + 104729)
        order = torch.randperm(len(donor_ids), generator=gen).tolist()
        h = held_out_count(len(donor_ids))
        held = sorted(donor_ids[j] for j in order[:h])
        kept = sorted(donor_ids[j] for j in order[h:])
        truth_ids = [assignment.sources[i] for i in held]
        shared = (kept, [assignment.sources[i] for i in kept])
        model_matrix, _ = mats.pair(matrix)
        truth = model_matrix[torch.tensor(truth_ids, device=model_matrix.device)].float()
        result["held_out"] = max(result["held_out"], h)
        for method in methods:
            rows = approximate(method, matrix, plan, mats, shared, held, options, cache, truth_ids)
            cos = torch.nn.functional.cosine_similarity(rows.float(), truth, dim=1)
            entry = result["methods"].setdefault(method, {})
            entry[matrix] = {
                "mean_cosine": round(float(cos.mean()), 6),
                "min_cosine": round(float(cos.min()), 6),
            }
    return result


def format_report(report: dict[str, Any]) -> str:
    """The evaluation as an aligned text table."""
    methods = report.get("methods", {})
    matrices = sorted({m for e in methods.values() for m in e}, key=lambda m: m != "embed")
    header = ["method", *[f"{m} cos (mean/min)" for m in matrices]]
    lines = [header]
    for method, entry in methods.items():
        cells = [method]
        for m in matrices:
            v = entry.get(m)
            cells.append(f"{v['mean_cosine']:.4f} / {v['min_cosine']:.4f}" if v else "-")
        lines.append(cells)
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    text = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    title = f"held-out shared tokens: {report.get('held_out', 0)} (seed {report.get('seed', 0)})"
    return "\n".join([title, *text])
