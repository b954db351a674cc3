"""What an extraction wrote and what it lost: ``adapter_config.json``, the per-module report
(table and JSON) and the adapter's README card."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from meldkit import __version__
from meldkit.errors import MergeRuntimeError
from meldkit.extract_lora.plan import ExtractionPlan
from meldkit.io.sizes import format_size

__all__ = [
    "REPORT_FILE",
    "ModuleResult",
    "ExtractionReport",
    "adapter_config",
    "format_table",
    "write_card",
]

REPORT_FILE = "extraction_report.json"


@dataclass
class ModuleResult:
    """One module's outcome: ``handling`` is ``lora``, ``embedding_lora``, ``full`` or
    ``unchanged`` (equal to the base: nothing written); ``rank`` is None at full rank."""

    module: str
    handling: str
    reason: str
    shape: list[int]
    rank: int | None
    energy: float = 1.0
    error: float = 0.0
    method: str | None = None
    seconds: float = 0.0
    saved_bias: bool = False

    @property
    def decomposed(self) -> bool:
        return self.handling in ("lora", "embedding_lora")


@dataclass
class ExtractionReport:
    """Per-module results and the summary of one extraction."""

    base: str
    model: str
    command: str | None
    modules: list[ModuleResult]
    left_out: list[tuple[str, str]]
    adapter_bytes: int
    vocab: tuple[int, int] | None
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        plan: ExtractionPlan,
        results: list[ModuleResult],
        adapter_bytes: int,
        command: str | None,
    ) -> ExtractionReport:
        return cls(
            str(plan.base.ref),
            str(plan.model.ref),
            command,
            results,
            list(plan.left_out),
            adapter_bytes,
            plan.vocab,
            warnings=list(plan.warnings),
        )

    @property
    def decomposed(self) -> list[ModuleResult]:
        return [m for m in self.modules if m.decomposed]

    @property
    def mean_error(self) -> float:
        errors = [m.error for m in self.decomposed]
        return sum(errors) / len(errors) if errors else 0.0

    @property
    def worst(self) -> ModuleResult | None:
        return max(self.decomposed, key=lambda m: m.error, default=None)

    def summary(self) -> dict[str, Any]:
        ranks = [m.rank or 0 for m in self.decomposed]
        worst = self.worst
        return {
            "adapter_bytes": self.adapter_bytes,
            "lora_modules": len(ranks),
            "full_rank_modules": sum(m.handling == "full" for m in self.modules),
            "unchanged_modules": sum(m.handling == "unchanged" for m in self.modules),
            "left_out_modules": len(self.left_out),
            "rank_min": min(ranks, default=0),
            "rank_max": max(ranks, default=0),
            "mean_error": self.mean_error,
            "worst_error": worst.error if worst else 0.0,
            "worst_module": worst.module if worst else None,
            "seconds": self.seconds,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "meldkit_version": __version__,
            "base": self.base,
            "model": self.model,
            "command": self.command,
            "vocabulary": list(self.vocab) if self.vocab else None,
            "summary": self.summary(),
            "modules": [asdict(m) for m in self.modules],
            "left_out": [{"module": m, "why": why} for m, why in self.left_out],
            "warnings": self.warnings,
        }


def format_table(report: ExtractionReport) -> str:
    """The per-module table and the summary, as printed by the CLI."""
    rows = [("module", "handling", "shape", "rank", "energy", "rel. error")]
    for m in report.modules:
        rank = "full" if m.rank is None else str(m.rank)
        shape = "x".join(str(d) for d in m.shape)
        rows.append((m.module, m.handling, shape, rank, f"{m.energy:.6f}", f"{m.error:.3e}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    s = report.summary()
    lines.append(
        f"adapter {format_size(s['adapter_bytes'])}: {s['lora_modules']} LoRA module(s) "
        f"(rank {s['rank_min']}-{s['rank_max']}), {s['full_rank_modules']} at full rank, "
        f"{s['unchanged_modules']} unchanged, {s['left_out_modules']} left out; relative error "
        f"mean {s['mean_error']:.3e}, worst {s['worst_error']:.3e} ({s['worst_module']})"
    )
    return "\n".join(lines)


def _target_modules(plan: ExtractionPlan, lora: list[str]) -> list[str]:
    """The last name components of the decomposed modules when they name no other module of
    the model (PEFT adapts every module ending with one), else the full names."""
    short = {m.rpartition(".")[2] for m in lora}
    every = {n.rpartition(".")[0] for n in plan.model.index.tensors}
    if {m for m in every if m.rpartition(".")[2] in short} == set(lora):
        return sorted(short)
    return sorted(lora)


def adapter_config(plan: ExtractionPlan, results: list[ModuleResult]) -> dict[str, Any]:
    """PEFT's ``adapter_config.json``: ``r`` the largest rank and ``lora_alpha = r`` (scale 1);
    other ranks in ``rank_pattern`` with ``alpha_pattern`` equal to them (scale 1 too)."""
    lora = [m for m in results if m.decomposed]
    saved = [m.module for m in results if m.handling == "full"]
    if not lora and not saved:
        raise MergeRuntimeError(
            "the fine-tune equals the base in every module extracted: the adapter would be empty",
            hint="check --model and --base, or the --include/--exclude patterns",
        )
    tied = {m.module for m in plan.modules if m.tied_head}
    r = max((m.rank or 0 for m in lora), default=1)
    pattern = {m.module: m.rank for m in lora if m.rank != r}
    architectures = (plan.model.config or {}).get("architectures") or []
    causal = any(str(a).endswith("ForCausalLM") for a in architectures)
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM" if causal else None,
        "base_model_name_or_path": str(plan.base.ref),
        "r": r,
        "lora_alpha": r,
        "rank_pattern": pattern,
        "alpha_pattern": dict(pattern),
        "target_modules": _target_modules(plan, [m.module for m in lora]),
        "modules_to_save": saved or None,
        "lora_dropout": 0.0,
        "bias": "all" if any(m.saved_bias for m in lora) else "none",
        "fan_in_fan_out": plan.fan_in_fan_out,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "ensure_weight_tying": bool(tied & set(saved)),
    }


def write_card(folder: Path, plan: ExtractionPlan, report: ExtractionReport) -> None:
    """README.md: what the adapter is, how it was made, what it lost, how to load it."""
    s = report.summary()
    lines = [
        "---",
        "library_name: peft",
        f"base_model: {report.base}",
        "tags: [meldkit, lora, extracted-lora]",
        "---",
        "",
        "# LoRA adapter extracted with meldkit",
        "",
        f"The difference between the fine-tune **{report.model}** and its base "
        f"**{report.base}**, as a PEFT LoRA adapter.",
        "",
    ]
    if report.command:
        lines += ["Command:", "", "```sh", report.command, "```", ""]
    lines += [
        f"- {s['lora_modules']} module(s) as LoRA, ranks {s['rank_min']} to {s['rank_max']} "
        "(`rank_pattern` lists the modules below the largest rank); "
        f"{s['full_rank_modules']} saved at full rank (`modules_to_save`); "
        f"{s['unchanged_modules']} equal to the base.",
        f"- Relative reconstruction error ||delta - BA|| / ||delta||: mean {s['mean_error']:.3e}, "
        f"worst {s['worst_error']:.3e} ({s['worst_module']}). Per module: `{REPORT_FILE}`.",
        f"- Adapter size: {format_size(s['adapter_bytes'])}.",
        "",
    ]
    if report.vocab:
        lines += [
            f"**The vocabulary changed from {report.vocab[0]} to {report.vocab[1]} tokens.** "
            "Resize the base model's embeddings before loading the adapter:",
            "",
            "```python",
            f"model.resize_token_embeddings({report.vocab[1]})",
            "model = PeftModel.from_pretrained(model, adapter_folder)",
            "```",
            "",
        ]
    if report.decomposed:
        lines += ["| module | rank | energy kept | relative error |", "|---|---:|---:|---:|"]
        lines += [
            f"| `{m.module}` | {m.rank} | {m.energy:.4f} | {m.error:.3e} |"
            for m in report.decomposed
        ]
        lines.append("")
    (folder / "README.md").write_text("\n".join(lines), encoding="utf-8")
