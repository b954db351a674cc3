"""Scoring one candidate: merge its recipe, load the result as a model, run the fitness.

:class:`CandidateEvaluator` is made once per worker (in this process, or in a Ray actor) and
keeps what candidates share:

- **in memory** (the default where it works): the donor model is loaded once with
  transformers, and each candidate's merged tensors are written straight into its parameters
  (:func:`meldkit.execute.in_memory.merge_plan_into`, the engine's own per-tensor path, so the
  weights are those ``meldkit merge`` would write). The inputs' tensors stay cached between
  candidates while they fit in half the free memory.
- **through a temporary folder** otherwise (the output's config differs from the donor's, its
  tensors do not match the model's parameters, or ``evaluation.in_memory: false``): a normal
  merge into a temporary folder, loaded, scored and deleted.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meldkit.errors import OptionError
from meldkit.evolve.candidate import Candidate
from meldkit.evolve.config import SearchConfig

__all__ = ["CandidateEvaluator", "EvaluatorFactory"]


def _available_memory() -> int:
    """Bytes of memory free for new allocations (MemAvailable), or 0 when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 0


def _import_transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise OptionError(
            "meldkit evolve loads candidates with transformers, which is not installed",
            hint="pip install 'meldkit[evolve]'",
        ) from None
    hf_logging: Any = transformers.utils.logging  # untyped: quiet its loading messages and bars
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    return transformers


class CandidateEvaluator:
    """Merges and scores candidates of one search; see the module docstring."""

    def __init__(self, config: SearchConfig) -> None:
        from meldkit.evolve.fitness import parse_fitness

        self.config = config
        self.fitness = parse_fitness(config.fitness, base_dir=config.base_dir)
        options = config.evaluation
        self.device = options.device
        self._model: Any = None
        self._tokenizer: Any = None
        self._params: dict[str, Any] | None = None
        self._loader: Any = None
        self.mode: str | None = None  # "memory" or "folder", chosen at the first candidate

    # -- public ---------------------------------------------------------------------------
    def evaluate(self, candidate: Candidate) -> dict[str, float]:
        """``{"fitness": weighted sum, term: value, ...}`` of one candidate."""
        from meldkit.api import plan_merge

        plan = plan_merge(candidate.recipe, on_warning=lambda message: None)
        if self.mode is None:
            self.mode = self._choose_mode(plan)
        if self.mode == "memory":
            return self._in_memory(plan)
        return self._through_folder(candidate)

    def close(self) -> None:
        if self._loader is not None:
            self._loader.close()
            self._loader = None
        self._model = self._params = None

    # -- in memory ------------------------------------------------------------------------
    def _choose_mode(self, plan: Any) -> str:
        wanted = self.config.evaluation.in_memory
        if wanted == "false":
            return "folder"
        donor = plan.models[plan.donor]
        if plan.vocabulary is not None or _shape_config(plan.out_config) != _shape_config(
            donor.config
        ):
            if wanted == "true":
                raise OptionError(
                    "evaluation.in_memory: true, but the merged model's config differs from "
                    f"{plan.donor}'s (a tokenizer or layer change), so it cannot be written "
                    "into a loaded copy of it",
                    hint="set evaluation.in_memory to auto or false",
                )
            return "folder"
        self._load_model(donor.folder)
        params = self._params
        assert params is not None
        planned = {t.name: t.shape for t in plan.tensors}
        mismatched = [
            n for n, shape in planned.items() if n in params and tuple(params[n].shape) != shape
        ]
        unplanned = [n for n in params if n not in planned]
        extra = [n for n in planned if n not in params]
        if mismatched or unplanned or extra:
            if wanted == "true":
                raise OptionError(
                    "evaluation.in_memory: true, but the merged tensors do not match the "
                    f"model's parameters ({len(extra)} unknown, {len(unplanned)} not merged, "
                    f"{len(mismatched)} of another shape)",
                    hint="set evaluation.in_memory to auto or false",
                )
            self._model = self._params = None
            return "folder"
        return "memory"

    def _load_model(self, folder: Path) -> None:
        import torch

        transformers = _import_transformers()
        dtype = getattr(torch, self.config.evaluation.model_dtype)
        model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
        model.to(self.device).eval().requires_grad_(False)
        self._model = model
        # Tied weights are one tensor under two names; the checkpoint stores the first.
        self._params, seen = {}, set()
        for name, p in model.state_dict(keep_vars=True).items():
            if p.is_floating_point() and p.data_ptr() not in seen:
                seen.add(p.data_ptr())
                self._params[name] = p
        if self.fitness.needs_tokenizer:
            self._tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))

    def _in_memory(self, plan: Any) -> dict[str, float]:
        from meldkit.execute.in_memory import CachingLoader, merge_plan_into
        from meldkit.execute.tensors import TensorLoader

        if self._loader is None:
            inputs = sum(s.info.nbytes for t in plan.tensors for s in t.sources)
            cache = self.config.evaluation.cache_inputs
            keep = cache == "true" or (cache == "auto" and inputs < _available_memory() // 2)
            kind = CachingLoader if keep else TensorLoader
            self._loader = kind(plan, self.device, lambda message: None)
        assert self._params is not None
        targets = {name: p.data for name, p in self._params.items()}
        merge_plan_into(plan, targets, device=self.device, loader=self._loader)
        return self._score(self._model, self._tokenizer)

    # -- through a folder -----------------------------------------------------------------
    def _through_folder(self, candidate: Candidate) -> dict[str, float]:
        import torch

        from meldkit.api import run_merge

        transformers = _import_transformers()
        work = Path(tempfile.mkdtemp(prefix="meldkit-evolve-"))
        try:
            out = work / "candidate"
            run_merge(
                candidate.recipe,
                out,
                device=self.device,
                quiet=True,
                write_model_card=False,
                on_warning=lambda message: None,
            )
            dtype = getattr(torch, self.config.evaluation.model_dtype)
            model = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=dtype)
            model.to(self.device).eval().requires_grad_(False)
            tokenizer = None
            if self.fitness.needs_tokenizer:
                tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
            return self._score(model, tokenizer)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _score(self, model: Any, tokenizer: Any) -> dict[str, float]:
        import torch

        with torch.no_grad():
            return {k: float(v) for k, v in self.fitness(model, tokenizer).items()}


# Config keys that do not change the model's modules: the output's dtype is the merge's, while
# the candidate is evaluated in ``model_dtype`` whatever it is.
_DTYPE_KEYS = ("torch_dtype", "dtype", "transformers_version")


def _shape_config(config: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (config or {}).items() if k not in _DTYPE_KEYS}


@dataclass(frozen=True)
class EvaluatorFactory:
    """Makes a worker's :class:`CandidateEvaluator` (picklable, for Ray actors)."""

    config: SearchConfig

    def __call__(self) -> CandidateEvaluator:
        return CandidateEvaluator(self.config)
