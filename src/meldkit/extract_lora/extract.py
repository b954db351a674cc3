"""Run a planned extraction: one module at a time, read -> delta -> factors -> write.

Memory holds one module at a time: its two input tensors (memory-mapped by the reader), the
float32 delta, and its factors; each factor is written as soon as it exists. The adapter is
written into a temporary folder beside the destination and renamed into place when complete
(:mod:`meldkit.execute.output`), so an interrupted run leaves no half adapter behind.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from meldkit.execute.device import resolve_device
from meldkit.execute.output import prepare_partial, publish
from meldkit.extract_lora.adapter_file import ADAPTER_WEIGHTS, AdapterFileWriter
from meldkit.extract_lora.plan import ExtractionPlan, ModulePlan, TensorPair
from meldkit.extract_lora.report import (
    REPORT_FILE,
    ExtractionReport,
    ModuleResult,
    adapter_config,
    write_card,
)
from meldkit.extract_lora.svd import low_rank_factors
from meldkit.io.header import TensorInfo
from meldkit.io.reader import TensorReader
from meldkit.plan.models import InputModelInfo

__all__ = ["run_extraction", "adapter_key"]

_PREFIX = "base_model.model."


def adapter_key(module: str, part: str) -> str:
    """The adapter's name for ``part`` of ``module``, as PEFT saves it."""
    return f"{_PREFIX}{module}.{part}"


class _Inputs:
    """Reads a tensor of the base or the fine-tune, applying its ``+lora`` adapter if any."""

    def __init__(self, reader: TensorReader, device: str) -> None:
        self.reader = reader
        self.device = device
        self._adapters: dict[str, Any] = {}

    def _adapter(self, info: InputModelInfo) -> Any:
        if info.lora_folder is None:
            return None
        if info.key not in self._adapters:
            from meldkit.io.lora import LoraAdapter

            adapter = LoraAdapter.open(info.lora_folder)
            adapter.bind(info.index.tensors)
            self._adapters[info.key] = adapter
        return self._adapters[info.key]

    def read(self, model: InputModelInfo, tensor: TensorInfo) -> torch.Tensor:
        adapter = self._adapter(model)
        if adapter is None:
            return self.reader.read(tensor, device=self.device)
        adapted: torch.Tensor = adapter.apply(tensor.name, self.reader.read(tensor))
        return adapted.to(self.device)


def _math_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _extract_lora(
    plan: ExtractionPlan, module: ModulePlan, inputs: _Inputs, writer: AdapterFileWriter
) -> ModuleResult:
    assert module.weight is not None
    pair, opts = module.weight, plan.options
    tuned = inputs.read(plan.model, pair.model)
    dtype = _math_dtype(tuned)
    delta = tuned.to(dtype)
    delta -= inputs.read(plan.base, pair.base).to(dtype)  # (out, in), or (vocab, hidden)
    embedding = module.handling == "embedding_lora"
    if embedding or (plan.fan_in_fan_out and module.reason == "linear"):
        # PEFT factors an embedding's (hidden, vocab) transpose, and a Conv1D's (out, in) one
        delta = delta.T
    started = time.perf_counter()
    factors = low_rank_factors(
        delta,
        name=module.module,
        max_rank=opts.max_rank,
        energy=opts.target_energy,
        sv_epsilon=opts.sv_epsilon,
        distribute_scale=opts.distribute_scale,
        seed=opts.seed,
        svd=opts.svd,
    )
    seconds = time.perf_counter() - started
    result = ModuleResult(
        module.module, module.handling, module.reason, list(pair.model.shape), factors.rank
    )
    result.energy, result.method, result.seconds = factors.energy, factors.method, seconds
    if factors.rank == 0:
        result.error = 0.0
        result.handling = "unchanged"
        return result
    a, b = factors.a.to(tuned.dtype), factors.b.to(tuned.dtype)
    # The error of the factors as stored (cast to the model's dtype), measured, not inferred.
    delta.addmm_(b.to(dtype), a.to(dtype), alpha=-1.0)
    residual = float(delta.double().square().sum())
    result.error = math.sqrt(residual / factors.total) if factors.total else 0.0
    del delta, tuned
    names = (
        ("lora_embedding_A", "lora_embedding_B")
        if embedding
        else ("lora_A.weight", "lora_B.weight")
    )
    writer.write(adapter_key(module.module, names[0]), a)
    writer.write(adapter_key(module.module, names[1]), b)
    for extra in module.tensors:  # the layer's bias, saved whole when it changed
        value, changed = _changed_value(plan, extra, inputs)
        if changed:
            param = extra.name.rpartition(".")[2]
            writer.write(adapter_key(module.module, f"base_layer.{param}"), value)
            result.saved_bias = True
    return result


def _changed_value(
    plan: ExtractionPlan, pair: TensorPair, inputs: _Inputs
) -> tuple[torch.Tensor, bool]:
    """The fine-tune's tensor (on the CPU, for writing) and whether it differs from the base's."""
    value = inputs.read(plan.model, pair.model)
    if pair.model.shape != pair.base.shape:
        return value.cpu(), True
    return value.cpu(), not torch.equal(value, inputs.read(plan.base, pair.base))


def _save_full(
    plan: ExtractionPlan, module: ModulePlan, inputs: _Inputs, writer: AdapterFileWriter
) -> ModuleResult:
    result = ModuleResult(module.module, "full", module.reason, list(module.shape), None)
    result.energy, result.error = 1.0, 0.0
    values = [(pair, *_changed_value(plan, pair, inputs)) for pair in module.tensors]
    if not any(changed for _, _, changed in values):
        result.handling = "unchanged"
        return result
    for pair, value, _ in values:  # a module is saved whole: PEFT replaces the whole module
        writer.write(_PREFIX + pair.name, value)
        if module.tied_head and pair.name.endswith(".weight"):
            writer.write(_PREFIX + module.tied_head, value)
    return result


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _header_names(plan: ExtractionPlan) -> list[tuple[str, int]]:
    names: list[tuple[str, int]] = []
    for m in plan.modules:
        if m.handling == "lora":
            names += [(adapter_key(m.module, p), 2) for p in ("lora_A.weight", "lora_B.weight")]
        elif m.handling == "embedding_lora":
            names += [
                (adapter_key(m.module, p), 2) for p in ("lora_embedding_A", "lora_embedding_B")
            ]
        if m.tied_head:
            names.append((_PREFIX + m.tied_head, 2))
        for pair in m.tensors:
            names.append((_PREFIX + pair.name, len(pair.model.shape)))
            names.append((adapter_key(m.module, "base_layer." + pair.name.rpartition(".")[2]), 1))
    return names


def run_extraction(
    plan: ExtractionPlan,
    *,
    overwrite: bool = False,
    command: str | None = None,
    on_module: Callable[[ModuleResult], None] | None = None,
) -> ExtractionReport:
    """Compute the adapter that ``plan`` describes and publish it to ``plan.out``; returns the
    report (also saved there as ``extraction_report.json``). ``on_module`` is called after each
    module (progress)."""
    device = resolve_device(plan.options.device)
    started = time.perf_counter()
    partial = prepare_partial(plan.out, resume=False, overwrite=overwrite)
    try:
        results: list[ModuleResult] = []
        with TensorReader() as reader:
            inputs = _Inputs(reader, device)
            writer = AdapterFileWriter(partial.path / ADAPTER_WEIGHTS, _header_names(plan))
            try:
                for module in plan.modules:
                    run = _save_full if module.handling == "full" else _extract_lora
                    results.append(run(plan, module, inputs, writer))
                    if on_module is not None:
                        on_module(results[-1])
                writer.finish()
            finally:
                writer.close()
        report = ExtractionReport.build(plan, results, writer.data_bytes, command)
        report.seconds = time.perf_counter() - started
        _write_json(partial.path / "adapter_config.json", adapter_config(plan, results))
        _write_json(partial.path / REPORT_FILE, report.to_json())
        write_card(partial.path, plan, report)
        publish(partial.path, plan.out, overwrite)
    except BaseException:
        partial.remove()
        raise
    finally:
        partial.release()
    return report
