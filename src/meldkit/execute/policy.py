"""The engine's tuning knobs, in one documented, immutable object.

Everything that decides *how* a plan is executed, not *what* it computes, is a field of
:class:`EnginePolicy`: how far the reader runs ahead, how big the row blocks of large tensors
are, how many threads each stage has, the order tensors are computed in, when the C heap is
trimmed, when inputs are mapped instead of read, and when the disk write-back starts. None of
them changes an output byte; each trades memory, CPU and wall time. The defaults are the values
the benchmarks in ``benchmarks/`` settled on (``docs/performance.md`` has the numbers).

A run takes its policy from :attr:`meldkit.execute.runner.RunOptions.policy`; left unset, it is
:func:`policy_from_environment`: the defaults, with the overrides of the environment variable
``MELDKIT_ENGINE_POLICY``, a JSON object of field names and values, e.g.::

    MELDKIT_ENGINE_POLICY='{"prefetch": 4, "trim_heap_bytes": null}' meldkit merge r.yml out

This is how the benchmarks vary the engine without a code change (``benchmarks/README.md``).
An unknown field or a value of the wrong type or range is a :class:`~meldkit.errors.MeldError`
naming it. The variable is for experiments: it is not part of the command's stable interface.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any

from meldkit.errors import MeldError, did_you_mean

__all__ = ["EnginePolicy", "DEFAULT_POLICY", "POLICY_ENV", "policy_from_environment"]

#: The environment variable holding JSON overrides of the default policy.
POLICY_ENV = "MELDKIT_ENGINE_POLICY"

_MiB = 1 << 20


@dataclass(frozen=True)
class EnginePolicy:
    """How the engine runs a plan: read-ahead, block sizes, threads, order, memory tricks.

    While one piece (a tensor, or a row block of a large one) is computed, at most
    ``prefetch + 1`` pieces are read ahead (fewer when the read-ahead bytes bind) and at most
    ``write_backlog`` finished ones wait for the writer, so memory is bounded by a few pieces
    whatever the model size. A piece is at most ``chunk_elements`` elements per input for
    element-wise methods, one whole tensor otherwise.
    """

    prefetch: int = 2
    """How far the reader runs ahead: it keeps ``prefetch + 1`` pieces queued or read beyond
    the one being computed. This keeps it busy through a run of small tensors (norms, biases)
    without holding more than a few layers' inputs."""

    read_ahead_bytes: int = 256 * _MiB
    """Input bytes the reader may hold ahead of an element-wise method (at least one piece is
    always read): with 16 MB blocks this never binds for small tensors, and it stops several
    huge unsplittable ones (a LoRA-patched embedding) from piling up."""

    read_ahead_whole_tensor_bytes: int = 64 * _MiB
    """The same bound for methods with whole-tensor statistics (TIES, DELLA, SLERP...): they
    already hold a whole tensor's inputs, in float32, while they compute, so less is read ahead
    of them."""

    chunk_elements: int = 4 * _MiB
    """Large tensors of element-wise methods are computed in row blocks of about this many
    elements per input (16 MB in float32), so their memory is bounded by the block, not by
    the tensor (an embedding is hundreds of MB); larger blocks gain nothing measurable."""

    max_math_threads: int = 8
    """Intra-op threads for the math when ``--threads`` is not given: every core, up to this.
    An element-wise method with a few operations per element (ram: 33 s with one thread on
    `med`, 19 s with two) needs them as much as the whole-tensor ones; a memory-bound one
    (linear) runs as fast either way, and the reader and writer threads mostly wait."""

    read_threads: int = 1
    """Threads that read inputs. One is enough: reads are page-cache copies or maps, far
    faster than the math, and one thread keeps the pieces arriving in order."""

    write_threads: int = 1
    """Threads that write results into their shards (``pwrite`` at planned offsets, so any
    number works); one keeps up with the math, which produces n times fewer bytes than it
    reads."""

    write_backlog: int = 1
    """Finished pieces that may still be waiting for the writer when the next one starts
    computing: one lets a write overlap the next computation; more only hold memory."""

    big_first: bool = True
    """Pull big tensors (embeddings, LM heads; see ``big_share``) forward in the compute
    order (:func:`meldkit.execute.tensors.compute_order`). A plan ends on the LM head, whose
    computation would otherwise overlap no reads and whose write-back would come just before
    the final fsync: about 0.5 s at the end of a `med` merge. False keeps the plan's order."""

    big_share: float = 0.5
    """A tensor is big when it has at least this share of the largest one's elements: the
    vocabulary tensors, not a Llama's MLP matrices (an eighth of them on `med`)."""

    trim_heap_bytes: int | None = 64 * _MiB
    """Before reading a tensor with at least this many input bytes, give the C heap's free
    pages back to the OS (:mod:`meldkit.execute.heap`): the layers' freed memory otherwise sits
    under ``lm_head``'s inputs (926-1067 -> 858-903 MB peak while computing it on `med`).
    None never trims."""

    map_min_bytes: int | None = 1 * _MiB
    """Safetensors inputs of at least this many bytes are mapped instead of read into a fresh
    buffer (:mod:`meldkit.io.reader`): mapping page-cache pages costs about half of copying
    them into newly zeroed memory; below 1 MB a map's system calls cost more than the copy.
    None always reads."""

    writeback: bool = True
    """Start the disk write of each tensor as soon as it lands (:mod:`meldkit.io.writeback`),
    so the fsync that completes a shard waits only for its last tensors (1.4 s for `med`'s
    0.8 GB shard otherwise)."""

    hash_chunk_bytes: int = 8 * _MiB
    """Bytes read at a time when the resume journal checksums a finished shard: bounded
    memory whatever the shard size, and large enough that the CRC runs at memory speed."""

    def __post_init__(self) -> None:
        problems = [p for f in dataclasses.fields(self) if (p := _check(f, getattr(self, f.name)))]
        if problems:
            raise MeldError(
                "invalid engine policy: " + "; ".join(problems),
                hint=f"see meldkit.execute.policy (the {POLICY_ENV} environment variable)",
            )

    def read_ahead(self, elementwise: bool) -> int:
        """The read-ahead bound for a method (element-wise or with whole-tensor statistics)."""
        return self.read_ahead_bytes if elementwise else self.read_ahead_whole_tensor_bytes

    def math_threads(self, requested: int | None) -> int:
        """The math's thread count: ``requested`` (``--threads``), else every core up to
        :attr:`max_math_threads`."""
        return requested or max(1, min(os.cpu_count() or 2, self.max_math_threads))

    @classmethod
    def from_overrides(cls, overrides: dict[str, Any]) -> EnginePolicy:
        """The default policy with ``overrides`` (field name -> value) applied; unknown names
        are a :class:`~meldkit.errors.MeldError`."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in overrides if k not in names]
        if unknown:
            raise MeldError(
                f"unknown engine policy field '{unknown[0]}'.{did_you_mean(unknown[0], names)}",
                hint="fields: " + ", ".join(names),
            )
        return cls(**overrides)


# The smallest value each numeric field accepts.
_MINIMUM = {
    "prefetch": 0,
    "write_backlog": 0,
    "read_ahead_bytes": 0,
    "read_ahead_whole_tensor_bytes": 0,
    "trim_heap_bytes": 0,
    "map_min_bytes": 0,
}


def _check(field: dataclasses.Field[Any], value: Any) -> str | None:
    """Why ``value`` does not fit ``field`` (its annotation and minimum), or None."""
    kind = str(field.type)
    if value is None:
        return None if kind.endswith("| None") else f"{field.name} cannot be null"
    if kind == "bool":
        return None if isinstance(value, bool) else f"{field.name} must be true or false"
    if kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
        return None if ok else f"{field.name} must be a positive number, got {value!r}"
    low = _MINIMUM.get(field.name, 1)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        return f"{field.name} must be an integer of at least {low}, got {value!r}"
    return None


DEFAULT_POLICY = EnginePolicy()


def policy_from_environment() -> EnginePolicy:
    """The default policy with the JSON overrides of ``MELDKIT_ENGINE_POLICY``, if set."""
    raw = os.environ.get(POLICY_ENV, "").strip()
    if not raw:
        return DEFAULT_POLICY
    try:
        overrides = json.loads(raw)
    except ValueError as exc:
        raise MeldError(
            f"{POLICY_ENV} is not valid JSON: {exc}",
            hint='give a JSON object, e.g. {"prefetch": 4}',
        ) from None
    if not isinstance(overrides, dict):
        raise MeldError(
            f"{POLICY_ENV} must be a JSON object of field names and values",
            hint='e.g. {"prefetch": 4}',
        )
    return EnginePolicy.from_overrides(overrides)
