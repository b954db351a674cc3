"""The plan's data: what :func:`~meldkit.plan.plan_merge` decides and execution carries out.

These are plain records with no planning logic, kept apart from :mod:`meldkit.plan.planner`
so that the modules which read a plan (execution, the model card, the output config) can
name its types without importing the planner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from meldkit.config.schema import MergeConfig
from meldkit.io.header import DTYPE_SIZES, TensorInfo
from meldkit.io.sizes import format_size
from meldkit.io.writer import ShardLayout
from meldkit.methods.registry import MethodSpec
from meldkit.plan.export import plan_to_dict
from meldkit.plan.models import InputModelInfo

__all__ = ["PlanOptions", "TensorSource", "TensorPlan", "MergePlan"]


@dataclass(frozen=True)
class PlanOptions:
    """Options that change the plan (not how it is executed)."""

    out_shard_size: int = 5_000_000_000
    unsafe_truncate_embeddings: bool = False
    strict: bool = False
    cache_dir: str | None = None


@dataclass(frozen=True)
class TensorSource:
    """One input tensor: the model's key, the tensor's name in that model, and where it lives."""

    model: str
    name: str
    info: TensorInfo
    # Fused MoE experts: per expert, the tensors concatenated along dim 0, then stacked. `info`
    # then describes the assembled tensor (shape, dtype) and is never read by offset.
    parts: tuple[tuple[TensorInfo, ...], ...] = ()


@dataclass
class TensorPlan:
    """How to produce one output tensor."""

    name: str
    shape: tuple[int, ...]
    out_dtype: str
    sources: tuple[TensorSource, ...]
    base_index: int | None
    shared: dict[str, Any]
    per_input: tuple[dict[str, Any], ...]
    load_dtype: str | None = None
    work_dtype: str = "F32"
    copy: bool = False  # a byte copy of sources[0]: no cast, no math
    vocab_axis: int | None = None
    integer: bool = False  # non-float tensor: copied when identical across inputs
    vocabulary: Any = None  # the OutputVocabulary that re-indexes this tensor's rows
    # Modifiers (meldkit.methods.modifiers): LiNeS' scale of the merged task vector, and
    # whether the inputs' task vectors are rescaled to the common norm before the method.
    lines_scale: float | None = None
    norm_match: bool = False

    def __repr__(self) -> str:
        # The generated repr would print every source's TensorInfo and the vocabulary.
        return (
            f"TensorPlan({self.name!r}, shape={list(self.shape)}, dtype={self.out_dtype}, "
            f"{len(self.sources)} source{'s' if len(self.sources) != 1 else ''})"
        )

    @property
    def out_nbytes(self) -> int:
        """Bytes of the output tensor in ``out_dtype``."""
        n = DTYPE_SIZES[self.out_dtype]
        for d in self.shape:
            n *= d
        return n


@dataclass
class MergePlan:
    """The whole merge, decided before any tensor byte is read."""

    config: MergeConfig
    method: MethodSpec
    models: dict[str, InputModelInfo]
    tensors: list[TensorPlan]
    donor: str
    out_config: dict[str, Any] | None
    shards: list[ShardLayout]
    options: PlanOptions
    output_layers: int
    warnings: list[str] = field(default_factory=list)
    vocabulary: Any = None  # OutputVocabulary when the recipe sets a tokenizer
    chat_template: str | None = None
    norm_match: str | None = None  # the target norm (mean, min, max) when a pre-pass runs

    def __repr__(self) -> str:
        # The generated repr would print the recipe, every input's index and every tensor
        # (115 KB for a small model); this says what the plan is in one line.
        shards = len(self.shards)
        return (
            f"<MergePlan {self.method.name}: {len(self.tensors)} tensors from "
            f"{len(self.models)} model{'s' if len(self.models) != 1 else ''}, "
            f"{shards} shard{'s' if shards != 1 else ''}, "
            f"{format_size(self.bytes_to_write)} to write>"
        )

    def to_dict(self) -> dict[str, Any]:
        """The whole plan as JSON-ready data (see :func:`meldkit.plan.export.plan_to_dict`)."""
        return plan_to_dict(self)

    @property
    def elementwise(self) -> bool:
        """Whether every tensor is merged element by element (the executor may then read
        ahead less: see :meth:`~meldkit.execute.policy.EnginePolicy.read_ahead`)."""
        return all(self.method.elementwise_for(t.shared, t.per_input) for t in self.tensors)

    @property
    def bytes_to_read(self) -> int:
        """Bytes read from the inputs, each stored tensor counted once however often it is used."""
        seen: dict[tuple[Any, int], int] = {}
        for t in self.tensors:
            for s in t.sources:
                for info in [p for group in s.parts for p in group] or [s.info]:
                    seen[(info.file, info.start)] = info.nbytes
        return sum(seen.values())

    @property
    def prepass_bytes(self) -> int:
        """Bytes the ``norm_match`` pre-pass reads (read again by the merge pass): the inputs
        of the tensors it measures."""
        seen: dict[tuple[Any, int], int] = {}
        for t in self.tensors:
            if t.norm_match:
                for s in t.sources:
                    for info in [p for group in s.parts for p in group] or [s.info]:
                        seen[(info.file, info.start)] = info.nbytes
        return sum(seen.values())

    @property
    def bytes_to_write(self) -> int:
        """Bytes of the output shards, headers included."""
        return sum(s.file_size for s in self.shards)

    @property
    def peak_memory_estimate(self) -> int:
        """Largest working set: inputs and result of one tensor in the work dtype, plus the
        raw input buffers of the tensor being prefetched."""
        worst = 0
        for t in self.tensors:
            numel = 1
            for d in t.shape:
                numel *= d
            raw = sum(s.info.nbytes for s in t.sources)
            work = 0 if t.copy else numel * DTYPE_SIZES[t.work_dtype] * (len(t.sources) + 3)
            worst = max(worst, raw * 2 + work)
        return worst
