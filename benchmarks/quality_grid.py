"""The recipes ``quality.py`` runs on TinyTasks: every method at a fixed sweep budget.

Budget: at most **4 points per method** (1 for methods without a strength to tune), chosen
before looking at results: the method's own default first (``default=True``; the hidden second
TinyTasks set shows whether a default generalises), then the strength (λ/α), then density or
rank fraction. MergeKit's twelve reference recipes (``../shared/tinytasks/recipes``) are rows
too, under their own names, so the baseline is re-measured with meldkit in the same run.
Methods that take exactly two models (slerp, nuslerp, nearswap, arcee_fusion) have no row: the
benchmark merges four fine-tunes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

TASKS = ("rev", "srt", "sft", "dup")


@dataclass(frozen=True)
class Row:
    """One recipe: ``method`` over the four fine-tunes (and the base unless ``base=False``)."""

    name: str
    method: str
    family: str  # "mergekit" (MergeKit has the method) or "new" (meldkit only)
    per_model: dict[str, Any] = field(default_factory=dict)
    top: dict[str, Any] = field(default_factory=dict)
    base: bool = True
    default: bool = False
    text: str | None = None  # a TT/ recipe's YAML, for rows read from files

    def recipe(self, root: Path, dtype: str) -> dict[str, Any]:
        """The recipe for the model set at ``root``, merged in ``dtype``."""
        if self.text is not None:
            data: dict[str, Any] = yaml.safe_load(self.text.replace("TT/", f"{root}/"))
            data["dtype"] = dtype
            return data
        models = []
        for t in TASKS:
            entry: dict[str, Any] = {"model": str(root / f"ft_{t}")}
            if self.per_model:
                entry["parameters"] = dict(self.per_model)
            models.append(entry)
        out: dict[str, Any] = {"merge_method": self.method, "models": models, "dtype": dtype}
        if self.base:
            out["base_model"] = str(root / "base")
        if self.top:
            out["parameters"] = dict(self.top)
        return out

    def params_shown(self) -> dict[str, Any]:
        """The parameters as the results table shows them."""
        if self.text is not None:
            data = yaml.safe_load(self.text)
            shown = dict(data.get("parameters") or {})
            first = (data.get("models") or [{}])[0].get("parameters") or {}
            shown.update(first)
            return shown
        return {**self.top, **self.per_model}


def recipe_rows(folder: Path) -> list[Row]:
    """Rows for every ``*.yaml`` recipe in ``folder`` (``TT/`` stands for the model root)."""
    rows = []
    for path in sorted(folder.glob("*.yaml")):
        text = path.read_text()
        method = str(yaml.safe_load(text)["merge_method"])
        rows.append(Row(path.stem, method, "mergekit", text=text))
    return rows


def _mergekit_rows(reference: Path) -> list[Row]:
    rows = [Row(f"ref_{r.name}", r.method, r.family, text=r.text) for r in recipe_rows(reference)]
    mk = "mergekit"
    rows += [
        Row("task_arithmetic_l0.7", "task_arithmetic", mk, {"weight": 1.0}, {"lambda": 0.7}),
        Row("ties_d0.8", "ties", mk, {"weight": 1.0, "density": 0.8}, {"normalize": True}),
        Row("ties_w0.5_d0.5", "ties", mk, {"weight": 0.5, "density": 0.5}, {"normalize": False}),
        Row("dare_ties_d0.3", "dare_ties", mk, {"weight": 0.5, "density": 0.3}),
        Row("dare_ties_d0.7", "dare_ties", mk, {"weight": 0.5, "density": 0.7}),
        Row("dare_linear_d0.5", "dare_linear", mk, {"weight": 0.5, "density": 0.5}),
        Row(
            "della_d0.3",
            "della",
            mk,
            {"weight": 0.5, "density": 0.3, "epsilon": 0.1},
            {"lambda": 1.0},
        ),
        Row(
            "della_d0.7",
            "della",
            mk,
            {"weight": 0.5, "density": 0.7, "epsilon": 0.1},
            {"lambda": 1.0},
        ),
        Row(
            "della_linear_d0.5", "della_linear", mk, {"weight": 0.5, "density": 0.5, "epsilon": 0.1}
        ),
        Row(
            "breadcrumbs_ties_d0.7",
            "breadcrumbs_ties",
            mk,
            {"weight": 0.5, "density": 0.7, "gamma": 0.01},
        ),
        Row("breadcrumbs_d0.9", "breadcrumbs", mk, {"weight": 0.5, "density": 0.9, "gamma": 0.01}),
        Row("sce_topk0.2", "sce", mk, top={"select_topk": 0.2}),
        Row("sce_topk1.0", "sce", mk, top={"select_topk": 1.0}),
        Row("multislerp", "multislerp", mk, default=True),
        Row("ram", "ram", mk, default=True),
        Row("ramplus_tl", "ramplus_tl", mk, default=True),
    ]
    return rows


def build_grid(tinytasks: Path) -> list[Row]:
    """Every row, with MergeKit's reference recipes read from ``tinytasks/recipes``."""
    return _mergekit_rows(tinytasks / "recipes") + _new_rows()


def _new_rows() -> list[Row]:
    return []
