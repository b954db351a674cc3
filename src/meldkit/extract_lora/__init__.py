"""LoRA extraction: the difference between a fine-tune and its base as a PEFT LoRA adapter.

``meldkit extract-lora --base B --model M OUT`` (or :func:`extract_lora`): plan from headers
(:mod:`~meldkit.extract_lora.plan`), factor each module's delta by a truncated SVD
(:mod:`~meldkit.extract_lora.svd`), stream the factors into ``adapter_model.safetensors``
(:mod:`~meldkit.extract_lora.adapter_file`), and report the rank, energy and error of every
module (:mod:`~meldkit.extract_lora.report`). Torch is imported only by :func:`extract_lora`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from meldkit.extract_lora.options import ExtractionOptions
from meldkit.extract_lora.plan import ExtractionPlan, plan_extraction
from meldkit.extract_lora.report import ExtractionReport, ModuleResult, format_table

__all__ = [
    "ExtractionOptions",
    "ExtractionPlan",
    "ExtractionReport",
    "ModuleResult",
    "extract_lora",
    "format_table",
    "plan_extraction",
]


def extract_lora(
    base: str | Path,
    model: str | Path,
    out: str | Path,
    *,
    cache_dir: str | None = None,
    overwrite: bool = False,
    command: str | None = None,
    on_module: Callable[[ModuleResult], None] | None = None,
    **options: Any,
) -> ExtractionReport:
    """Extract ``model - base`` as a LoRA adapter into ``out``; returns the report.

    ``options`` are the fields of :class:`ExtractionOptions` (``rank``, ``energy``,
    ``max_error``, ``include``, ``exclude``, ``save_modules``, ``embed_lora``, ...). Every
    problem is raised as one :class:`~meldkit.errors.PlanError` before anything is computed.
    """
    from meldkit.extract_lora.extract import run_extraction

    for key in ("include", "exclude", "save_modules"):
        if isinstance(options.get(key), (list, str)):
            value = options[key]
            options[key] = (value,) if isinstance(value, str) else tuple(value)
    opts = ExtractionOptions(**options)
    plan = plan_extraction(
        str(base), str(model), out, opts, cache_dir=cache_dir, overwrite=overwrite
    )
    return run_extraction(plan, overwrite=overwrite, command=command, on_module=on_module)
