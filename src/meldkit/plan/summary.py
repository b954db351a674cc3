"""Human summaries of a plan: :func:`describe_plan` (what ``meldkit plan`` prints) and
:func:`describe_parameters` (``meldkit plan --params``: the value every parameter takes).

Torch-free, like the rest of :mod:`meldkit.plan`, so ``meldkit plan`` never imports torch.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from meldkit.io.sizes import format_size

if TYPE_CHECKING:
    from meldkit.plan.types import MergePlan, TensorPlan

__all__ = ["describe_plan", "describe_parameters", "format_value"]

# `model.layers.12.self_attn.q_proj.weight` -> ("model.layers.", 12, "self_attn.q_proj.weight"):
# the first dotted number is the layer (an expert number further on stays in the suffix).
_LAYER_NAME = re.compile(r"^(?P<prefix>.*?\.)(?P<layer>\d+)\.(?P<suffix>.+)$")
_WIDTH = 100

Row = tuple[tuple[str, Any], ...]  # (label, value) pairs of one tensor, in a fixed order


def describe_plan(plan: MergePlan, list_tensors: bool = False) -> str:
    """A human summary of a plan: inputs, method, tensors, shards, bytes and memory.

    ``list_tensors`` adds one line per output tensor (shape, dtype and sources).
    """
    lines = [f"method: {plan.method.name}", "inputs:"]
    for key, info in plan.models.items():
        extra = f" + LoRA {info.lora_folder}" if info.lora_folder else ""
        lines.append(
            f"  - {key} ({len(info.index.tensors)} tensors, {info.layout.num_layers} layers){extra}"
        )
    lines.append(
        f"output: {len(plan.tensors)} tensors, {plan.output_layers} layers, "
        f"{len(plan.shards)} shard{'s' if len(plan.shards) != 1 else ''}"
    )
    for shard in plan.shards:
        lines.append(
            f"  - {shard.filename}: {len(shard.entries)} tensors, {format_size(shard.file_size)}"
        )
    lines.append(f"bytes to read: {format_size(plan.bytes_to_read)}")
    if plan.norm_match is not None:
        measured = sum(1 for t in plan.tensors if t.norm_match)
        lines.append(
            f"norm_match pre-pass ({plan.norm_match}): task-vector norms over {measured} "
            f"tensors, {format_size(plan.prepass_bytes)} read before the merge (read twice)"
        )
    lines.append(f"bytes to write: {format_size(plan.bytes_to_write)}")
    lines.append(f"estimated peak memory: {format_size(plan.peak_memory_estimate)}")
    if list_tensors:
        lines.append("tensors:")
        for t in plan.tensors:
            srcs = ", ".join(f"{s.model}:{s.name}" for s in t.sources)
            lines.append(f"  {t.name} {list(t.shape)} {t.out_dtype} <- {srcs}")
    return "\n".join(lines)


def format_value(value: Any) -> str:
    """A resolved parameter value as the table shows it: ``true``, ``0.1429``, ``unset``."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def describe_parameters(plan: MergePlan) -> str:
    """The value each parameter takes, after gradients and filters, for every output tensor.

    Tensors with equal values are shown together: non-layer tensors by name, layer tensors
    per stack and tensor kind (``model.layers.0-31 self_attn.*``). A value that changes from
    layer to layer is listed once per layer, in layer order; per-model values are labelled
    ``weight[ft1]``.
    """
    labels = _model_labels(plan)
    lines = [f"resolved parameters ({plan.method.name}; one value per layer where they differ):"]
    lines += [f"  {label} = {key}" for key, label in labels.items() if label != key]
    if not any(_row(plan, t, labels) for t in plan.tensors):
        lines.append(f"  {plan.method.name} takes no parameters")
        return "\n".join(lines)
    for where, rows in _groups(plan, labels):
        lines.extend(_render(where, rows))
    return "\n".join(lines)


def _model_labels(plan: MergePlan) -> dict[str, str]:
    """A short label per input model: its folder name when that is unique, else its key."""
    names = {
        key: PurePath(str(info.ref.model.path)).name or key for key, info in plan.models.items()
    }
    taken = list(names.values())
    return {key: (name if taken.count(name) == 1 else key) for key, name in names.items()}


def _row(plan: MergePlan, t: TensorPlan, labels: dict[str, str]) -> Row:
    """One tensor's resolved values: shared ones, then each per-model one, model by model."""
    row: list[tuple[str, Any]] = [(name, value) for name, value in t.shared.items()]
    # The modifiers, where they apply: LiNeS' scale of this tensor's merged task vector.
    if t.lines_scale is not None:
        row.append(("lines_scale", t.lines_scale))
    if t.norm_match:
        row.append(("norm_match", plan.norm_match))
    for spec in plan.method.params:
        for source, values in zip(t.sources, t.per_input):
            if spec.name in values:
                row.append(
                    (f"{spec.name}[{labels.get(source.model, source.model)}]", values[spec.name])
                )
    return tuple(row)


def _groups(plan: MergePlan, labels: dict[str, str]) -> list[tuple[str, list[Row]]]:
    """(where, one row per layer) for every group of tensors, in plan order."""
    single: dict[Row, list[str]] = {}  # non-layer tensors by equal values
    stacks: dict[str, dict[str, dict[int, Row]]] = {}  # prefix -> suffix -> layer -> row
    order: list[tuple[str, Any]] = []
    for t in plan.tensors:
        row = _row(plan, t, labels)
        m = _LAYER_NAME.match(t.name)
        if m is None:
            if row not in single:
                order.append(("single", row))
            single.setdefault(row, []).append(t.name)
            continue
        prefix = m["prefix"]
        if prefix not in stacks:
            order.append(("stack", prefix))
        stacks.setdefault(prefix, {}).setdefault(m["suffix"], {})[int(m["layer"])] = row
    out: list[tuple[str, list[Row]]] = []
    for kind, key in order:
        if kind == "single":
            out.append((", ".join(single[key]), [key]))
        else:
            out.extend(_stack_groups(key, stacks[key]))
    return out


def _stack_groups(prefix: str, suffixes: dict[str, dict[int, Row]]) -> list[tuple[str, list[Row]]]:
    """Collapse a stack's tensor kinds with equal per-layer values, then split into layer runs."""
    by_series: dict[tuple[tuple[int, Row], ...], list[str]] = {}
    for suffix, per_layer in suffixes.items():
        series = tuple(sorted(per_layer.items()))
        by_series.setdefault(series, []).append(suffix)
    out: list[tuple[str, list[Row]]] = []
    for series, members in by_series.items():
        kinds = _kind_names(members, list(suffixes))
        for layers, rows in _runs(list(series)):
            out.append((f"{prefix}{_ranges(layers)} {kinds}", rows))
    return out


def _runs(series: list[tuple[int, Row]]) -> list[tuple[list[int], list[Row]]]:
    """Split layers into runs of consecutive layers with equal values, unless that leaves
    single layers (a gradient): those are shown as one run with a value per layer."""
    runs: list[tuple[list[int], list[Row]]] = []
    for layer, row in series:
        if runs and runs[-1][0][-1] == layer - 1 and runs[-1][1][-1] == row:
            runs[-1][0].append(layer)
            runs[-1][1].append(row)
        else:
            runs.append(([layer], [row]))
    if len(runs) > 1 and any(len(layers) == 1 for layers, _ in runs):
        return [([layer for layer, _ in series], [row for _, row in series])]
    return runs


def _kind_names(members: Sequence[str], every: Sequence[str]) -> str:
    """``self_attn.*`` for all of a module's tensors, else their suffixes; ``all tensors``."""
    if len(members) == len(every):
        return "all tensors"
    names: list[str] = []
    for suffix in members:
        head = suffix.split(".", 1)[0]
        family = [s for s in every if s.split(".", 1)[0] == head]
        whole = len(family) > 1 and all(s in members for s in family)
        name = f"{head}.*" if whole else suffix
        if name not in names:
            names.append(name)
    return ", ".join(names)


def _ranges(layers: Sequence[int]) -> str:
    """``0-3,8,10-11`` for a sorted list of layer numbers."""
    parts: list[str] = []
    start = prev = layers[0]
    for n in [*layers[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return ",".join(parts)


def _render(where: str, rows: list[Row]) -> list[str]:
    """One line when every value is the same across the group (and it fits), else the group's
    name, a line per value that varies (its value for each layer) and the constant values."""
    labels = list(dict.fromkeys(label for row in rows for label, _ in row))
    values = [dict(row) for row in rows]
    same = {label for label in labels if all(v.get(label) == values[0].get(label) for v in values)}
    constant = [
        f"{label}={format_value(values[0].get(label))}" for label in labels if label in same
    ]
    varying = [label for label in labels if label not in same]
    one_line = f"  {where}: {' '.join(constant) or 'no parameters'}"
    if not varying and len(one_line) <= _WIDTH:
        return [one_line]
    lines = [f"  {where}:"]
    width = max((len(label) for label in varying), default=0)
    for label in varying:
        series = " ".join(format_value(v.get(label)) for v in values)
        lead = f"    {label:<{width}} = "
        wrapped = _wrap(series, _WIDTH - len(lead)) or [""]
        lines.append(lead + wrapped[0])
        lines += [" " * len(lead) + more for more in wrapped[1:]]
    lines += ["    " + part for part in _wrap(" ".join(constant), _WIDTH - 4)]
    return lines


def _wrap(text: str, width: int) -> list[str]:
    # Only at spaces: a value, or a label holding a model path, is never cut in two.
    return textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False)
