"""Mixture-of-experts layers in transformers 5's fused layout, as MergeKit 0.1.5 writes them.

Checkpoints saved by older transformers (and by default by transformers 5) keep one tensor per
expert: ``block_sparse_moe.experts.N.w1/w2/w3.weight`` (Mixtral) or
``mlp.experts.N.gate_proj/up_proj/down_proj.weight`` (Qwen3-MoE). MergeKit 0.1.5 loads them
through transformers' conversion into fused tensors and merges and writes those:

* ``mlp.experts.gate_up_proj``: (experts, 2 x intermediate, hidden), expert e = cat(w1, w3)
* ``mlp.experts.down_proj``: (experts, hidden, intermediate), expert e = w2
* the router ``block_sparse_moe.gate.weight`` becomes ``mlp.gate.weight`` (Mixtral).

Methods with whole-tensor statistics (TIES' top-k, slerp's norms) see the fused tensor, as
there. Layers already in the fused layout are left as they are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["FusedExperts", "fuse_expert_suffixes"]


@dataclass(frozen=True)
class FusedExperts:
    """One fused output tensor: per expert, the layer suffixes concatenated along dim 0."""

    suffix: str
    parts: tuple[tuple[str, ...], ...]


_LAYOUTS = (
    # (per-expert pattern, router rename, gate_up parts, down part)
    (
        re.compile(r"^block_sparse_moe\.experts\.(\d+)\.(w1|w2|w3)\.weight$"),
        "block_sparse_moe.experts.{e}.{w}.weight",
        ("block_sparse_moe.gate.weight", "mlp.gate.weight"),
        ("w1", "w3"),
        "w2",
    ),
    (
        re.compile(r"^mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$"),
        "mlp.experts.{e}.{w}.weight",
        None,
        ("gate_proj", "up_proj"),
        "down_proj",
    ),
)


def fuse_expert_suffixes(suffixes: list[str]) -> tuple[list[str | FusedExperts], dict[str, str]]:
    """A layer's suffixes with per-expert weights replaced by fused tensors (at the position of
    the first expert weight), and output renames (router). Unchanged when no layout matches or
    an expert is incomplete."""
    for pattern, template, router, gate_up, down in _LAYOUTS:
        experts: dict[int, set[str]] = {}
        for s in suffixes:
            m = pattern.match(s)
            if m:
                experts.setdefault(int(m.group(1)), set()).add(m.group(2))
        if not experts:
            continue
        count = max(experts) + 1
        needed = {*gate_up, down}
        if sorted(experts) != list(range(count)) or any(v != needed for v in experts.values()):
            return list(suffixes), {}  # incomplete: merge the per-expert tensors as they are
        fused_gate_up = FusedExperts(
            "mlp.experts.gate_up_proj",
            tuple(tuple(template.format(e=e, w=w) for w in gate_up) for e in range(count)),
        )
        fused_down = FusedExperts(
            "mlp.experts.down_proj", tuple((template.format(e=e, w=down),) for e in range(count))
        )
        out: list[str | FusedExperts] = []
        placed = False
        for s in suffixes:
            if pattern.match(s):
                if not placed:
                    out += [fused_gate_up, fused_down]
                    placed = True
                continue
            out.append(s)
        renames = {router[0]: router[1]} if router and router[0] in suffixes else {}
        return out, renames
    return list(suffixes), {}
