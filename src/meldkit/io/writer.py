"""Streaming sharded safetensors output with a layout fixed before the first byte is written.

Every output tensor's name, dtype and shape are known from the plan, so :func:`plan_shards`
computes each shard's header and every tensor's byte range up front (torch-free). The
:class:`ShardedWriter` then writes each tensor with ``os.pwrite`` at its final offset, in any
order and from any number of threads, holding no write buffer: a tensor's memory can be freed
as soon as ``write`` returns. MergeKit instead accumulates up to 5 GB per shard in memory.

A shard is fsynced, closed and reported (``on_shard_complete``) the moment its last tensor
lands, which is what a resume journal needs. ``model.safetensors.index.json`` is written last,
by :meth:`ShardedWriter.finish`, after checking that every tensor was written exactly once.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import struct
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from meldkit.errors import MergeRuntimeError, OutputError, PlanError, disk_full, is_disk_full
from meldkit.execute.policy import DEFAULT_POLICY
from meldkit.io.header import DTYPE_SIZES
from meldkit.io.writeback import start_writeback

if TYPE_CHECKING:
    import torch

__all__ = [
    "OutputTensorSpec",
    "ShardEntry",
    "ShardLayout",
    "plan_shards",
    "shard_filename",
    "ShardedWriter",
    "INDEX_FILENAME",
]

INDEX_FILENAME = "model.safetensors.index.json"
# Linux caps one write at 0x7ffff000 bytes; smaller chunks keep every call well below it.
_MAX_CHUNK = 1 << 30


@dataclass(frozen=True)
class OutputTensorSpec:
    """One output tensor as planned: name, safetensors dtype code, shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        """Element count (1 for a 0-dim tensor, 0 for an empty one)."""
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        """Bytes the tensor occupies in the file."""
        return self.numel * DTYPE_SIZES[self.dtype]


@dataclass(frozen=True)
class ShardEntry:
    """A tensor's place in its shard: ``[begin, end)`` relative to the shard's data section."""

    spec: OutputTensorSpec
    begin: int
    end: int


@dataclass(frozen=True)
class ShardLayout:
    """One output file: its name, tensors, encoded header and exact size.

    ``header`` is everything before the data section: the 8-byte little-endian JSON length
    followed by the JSON, space-padded to a multiple of 8 as safetensors does, so the data
    section starts 8-byte aligned. An entry's absolute offset is ``len(header) + begin``.
    """

    filename: str
    entries: tuple[ShardEntry, ...]
    header: bytes
    file_size: int

    @property
    def data_start(self) -> int:
        """Absolute offset of the data section (the header's length)."""
        return len(self.header)

    @property
    def data_bytes(self) -> int:
        """Bytes of tensor data in this shard."""
        return self.file_size - len(self.header)


def shard_filename(i: int, n: int) -> str:
    """Hugging Face's shard name: ``model.safetensors`` alone, else ``model-00001-of-00003...``."""
    if n == 1:
        return "model.safetensors"
    return f"model-{i + 1:05d}-of-{n:05d}.safetensors"


def _check_specs(specs: Sequence[OutputTensorSpec], max_shard_bytes: int) -> None:
    problems: list[str] = []
    if not isinstance(max_shard_bytes, int) or max_shard_bytes <= 0:
        problems.append(
            f"the shard size limit must be a positive byte count, got {max_shard_bytes!r}"
        )
    seen: set[str] = set()
    for s in specs:
        if s.name in seen:
            problems.append(f"output tensor '{s.name}' is produced twice")
        if s.name == "__metadata__":
            problems.append("an output tensor cannot be named '__metadata__' in safetensors")
        seen.add(s.name)
        if s.dtype not in DTYPE_SIZES:
            problems.append(f"output tensor '{s.name}' has unknown dtype {s.dtype!r}")
        if not all(isinstance(d, int) and d >= 0 for d in s.shape):
            problems.append(f"output tensor '{s.name}' has invalid shape {s.shape!r}")
    if problems:
        raise PlanError(problems)


def _encode_header(entries: Sequence[ShardEntry], metadata: Mapping[str, str]) -> bytes:
    header: dict[str, object] = {"__metadata__": dict(metadata)}
    for e in entries:
        header[e.spec.name] = {
            "dtype": e.spec.dtype,
            "shape": list(e.spec.shape),
            "data_offsets": [e.begin, e.end],
        }
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def plan_shards(
    specs: Sequence[OutputTensorSpec],
    max_shard_bytes: int,
    metadata: Mapping[str, str] | None = None,
) -> list[ShardLayout]:
    """Split ``specs`` (order kept) into shards of at most ``max_shard_bytes`` tensor bytes.

    A new shard starts when the next tensor would push the current one past the limit; a
    tensor larger than the limit gets a shard of its own. ``metadata`` (string values) joins
    ``{"format": "pt"}`` in each header's ``__metadata__``. No specs, no shards.
    """
    _check_specs(specs, max_shard_bytes)
    groups: list[list[OutputTensorSpec]] = []
    size = 0
    for spec in specs:
        if not groups or (groups[-1] and size + spec.nbytes > max_shard_bytes):
            groups.append([])
            size = 0
        groups[-1].append(spec)
        size += spec.nbytes
    meta = {"format": "pt", **(metadata or {})}
    layouts: list[ShardLayout] = []
    for i, group in enumerate(groups):
        entries: list[ShardEntry] = []
        offset = 0
        for spec in group:
            # Contiguous, gap-free data: safetensors rejects files with holes between tensors.
            entries.append(ShardEntry(spec, offset, offset + spec.nbytes))
            offset += spec.nbytes
        header = _encode_header(entries, meta)
        layouts.append(
            ShardLayout(
                shard_filename(i, len(groups)), tuple(entries), header, len(header) + offset
            )
        )
    return layouts


def _os_error(exc: OSError, path: Path) -> MergeRuntimeError:
    if is_disk_full(exc):
        return disk_full(path)
    return MergeRuntimeError(f"cannot write {path}: {exc.strerror or exc}")


def _tensor_view(tensor: torch.Tensor) -> tuple[memoryview, torch.Tensor]:
    """A read-only byte view of ``tensor`` and the CPU tensor that owns those bytes.

    The view is taken through ctypes rather than numpy: numpy has no bfloat16 and is not a
    dependency. The caller must keep the returned tensor alive while it uses the view.
    """
    import torch

    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    # (shape) -> (numel,) -> (nbytes,) uint8; reshape(-1) also turns a 0-dim tensor into 1-D.
    flat = t.contiguous().reshape(-1).view(torch.uint8)
    n = flat.numel()
    if n == 0:
        return memoryview(b""), flat
    raw = (ctypes.c_char * n).from_address(flat.data_ptr())
    return memoryview(raw).cast("B").toreadonly(), flat


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    done, total = 0, len(view)
    while done < total:
        n = os.pwrite(fd, view[done : min(total, done + _MAX_CHUNK)], offset + done)
        if n <= 0:  # a write that makes no progress would loop forever
            raise OSError(errno.EIO, "write made no progress")
        done += n


class ShardedWriter:
    """Writes the tensors of precomputed :class:`ShardLayout` s into ``folder``; thread-safe.

    ``on_shard_complete(filename)`` is called (in the writing thread) once per shard, after
    its file is fsynced and closed. ``completed`` names shards already complete on disk from
    an earlier, interrupted run: they are checked (size and header) and left untouched, and
    their tensors count as written. ``writeback`` starts each tensor's disk write as soon as it
    lands (:mod:`meldkit.io.writeback`). Use as a context manager: a clean exit calls
    :meth:`finish`, an exception calls :meth:`abort`.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        layouts: Sequence[ShardLayout],
        on_shard_complete: Callable[[str], None] | None = None,
        completed: Iterable[str] = (),
        writeback: bool = DEFAULT_POLICY.writeback,
    ) -> None:
        self.folder = Path(folder)
        self.layouts = list(layouts)
        self._writeback = writeback
        self._on_shard_complete = on_shard_complete
        self._where: dict[str, tuple[int, ShardEntry]] = {}
        for i, layout in enumerate(self.layouts):
            for entry in layout.entries:
                self._where[entry.spec.name] = (i, entry)
        self._remaining = [len(layout.entries) for layout in self.layouts]
        self._done = [False] * len(self.layouts)
        self._claimed: set[str] = set()
        self._written: set[str] = set()
        self._partial: dict[str, int] = {}  # bytes landed of tensors written in row blocks
        self._fds: dict[int, int] = {}
        self._inflight = 0
        self._state = "open"
        self._cond = threading.Condition()
        self._adopt(set(completed))

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> ShardedWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None or self._state != "open":
            self.abort()
            return
        try:
            self.finish()
        finally:
            self.abort()

    def completed_shards(self) -> list[str]:
        """Filenames (in layout order) whose tensors are all written, fsynced and closed."""
        with self._cond:
            return [
                lay.filename for lay, done in zip(self.layouts, self._done, strict=True) if done
            ]

    def finish(self) -> list[Path]:
        """Check every tensor was written, write the index when sharded; return all files.

        Raises :class:`MergeRuntimeError` naming the tensors never written (the writer stays
        open so the caller may still write them, or :meth:`abort`).
        """
        with self._cond:
            self._require_open()
            self._cond.wait_for(lambda: self._inflight == 0)
            missing = [n for n in self._where if n not in self._written]
            if missing:
                shown = ", ".join(f"'{n}'" for n in missing[:10])
                more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
                raise MergeRuntimeError(
                    f"internal error: {len(missing)} output tensor(s) were never written: "
                    f"{shown}{more}"
                )
            self._state = "finished"
            empty = [i for i, done in enumerate(self._done) if not done]
        for i in empty:  # only layouts with no tensors at all can still be pending here
            self._complete(i, self._open_shard(i))
        files = [self.folder / layout.filename for layout in self.layouts]
        if len(self.layouts) > 1:
            files.append(self._write_index())
        return files

    def abort(self) -> None:
        """Stop accepting writes, wait for writes in progress, close files. Idempotent.

        Waiting matters: closing a descriptor another thread is writing to could let the OS
        reuse its number for an unrelated file, which would then receive the bytes.
        """
        with self._cond:
            if self._state == "open":
                self._state = "closed"
            self._cond.wait_for(lambda: self._inflight == 0)
            fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    close = abort

    # -- writing ---------------------------------------------------------------------------

    def write(self, name: str, tensor: torch.Tensor, row_start: int | None = None) -> None:
        """Write one output tensor at its planned offset; each name exactly once.

        With ``row_start``, ``tensor`` is a block of rows ``[row_start, row_start + len)`` of
        the output tensor (large tensors are computed in row chunks); the tensor counts as
        written once all its rows have landed.
        """
        from meldkit.io.dtypes import code_of

        found = self._where.get(name)
        if found is None:
            raise MergeRuntimeError(f"internal error: '{name}' is not an output tensor of the plan")
        i, entry = found
        spec = entry.spec
        code = code_of(tensor.dtype)
        shape = tuple(tensor.shape)
        if row_start is None:
            fits = shape == spec.shape
            offset, nbytes = 0, spec.nbytes
        else:
            fits = (
                len(shape) == len(spec.shape) >= 1
                and shape[1:] == spec.shape[1:]
                and 0 <= row_start
                and row_start + shape[0] <= spec.shape[0]
            )
            row_bytes = spec.nbytes // spec.shape[0] if fits and spec.shape[0] else 0
            offset, nbytes = row_start * row_bytes, shape[0] * row_bytes if fits else 0
        if code != spec.dtype or not fits:
            where = "" if row_start is None else f" (rows from {row_start})"
            raise MergeRuntimeError(
                f"internal error: tensor '{name}'{where} is {code} {list(shape)} but the plan "
                f"says {spec.dtype} {list(spec.shape)}"
            )
        path = self.folder / self.layouts[i].filename
        with self._cond:
            self._require_open()
            if row_start is None or name not in self._partial:
                if name in self._claimed:
                    raise MergeRuntimeError(f"internal error: tensor '{name}' written twice")
                self._claimed.add(name)
                if row_start is not None:
                    self._partial[name] = 0
            fd = self._fds.get(i)
            if fd is None:
                fd = self._fds[i] = self._open_shard(i)
            self._inflight += 1
        last = False
        try:
            view, owner = _tensor_view(tensor)
            start = self.layouts[i].data_start + entry.begin + offset
            try:
                _pwrite_all(fd, view, start)
            except OSError as exc:
                raise _os_error(exc, path) from None
            if self._writeback:
                start_writeback(fd, start, len(view))  # so the shard's fsync has little left
            del view, owner
            with self._cond:
                done = True
                if row_start is not None:
                    self._partial[name] += nbytes
                    done = self._partial[name] >= spec.nbytes
                if done:
                    self._written.add(name)
                    self._remaining[i] -= 1
                    last = self._remaining[i] == 0
                    if last:
                        # No other thread touches this shard any more: all its tensors are claimed.
                        del self._fds[i]
        except BaseException:
            with self._cond:
                if row_start is None:
                    self._claimed.discard(name)
                self._inflight -= 1
                self._cond.notify_all()
            raise
        try:
            if last:
                self._complete(i, fd)
        finally:
            with self._cond:
                self._inflight -= 1
                self._cond.notify_all()

    def _require_open(self) -> None:
        if self._state != "open":
            raise MergeRuntimeError(f"internal error: the writer is already {self._state}")

    def _open_shard(self, i: int) -> int:
        """Create shard ``i`` with its header and final size; returns the descriptor."""
        layout = self.layouts[i]
        path = self.folder / layout.filename
        try:
            fd = os.open(
                path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o644
            )
            try:
                _pwrite_all(fd, memoryview(layout.header), 0)
                # Set the final size now, so tensors can land in any order.
                os.ftruncate(fd, layout.file_size)
            except BaseException:
                os.close(fd)
                raise
        except OSError as exc:
            raise _os_error(exc, path) from None
        return fd

    def _complete(self, i: int, fd: int) -> None:
        """fsync and close a finished shard, then report it."""
        filename = self.layouts[i].filename
        try:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            fsync_dir(self.folder)
        except OSError as exc:
            raise _os_error(exc, self.folder / filename) from None
        with self._cond:
            self._done[i] = True
        if self._on_shard_complete is not None:
            self._on_shard_complete(filename)

    def _adopt(self, completed: set[str]) -> None:
        """Mark shards from an earlier run as written after checking their size and header."""
        by_name = {layout.filename: i for i, layout in enumerate(self.layouts)}
        unknown = sorted(completed - by_name.keys())
        if unknown:
            raise OutputError(f"cannot resume: {', '.join(unknown)} is not part of this plan")
        for filename in sorted(completed):
            i = by_name[filename]
            layout = self.layouts[i]
            path = self.folder / filename
            try:
                with open(path, "rb") as fh:
                    size = os.fstat(fh.fileno()).st_size
                    head = fh.read(len(layout.header))
            except OSError as exc:
                raise OutputError(
                    f"cannot resume: {path} is unreadable ({exc.strerror or exc})",
                    hint="start the merge afresh",
                ) from None
            if size != layout.file_size or head != layout.header:
                raise OutputError(
                    f"cannot resume: {path} does not match the plan",
                    hint="the recipe or inputs changed since the interrupted run; start afresh",
                )
            self._done[i] = True
            self._remaining[i] = 0
            names = {e.spec.name for e in layout.entries}
            self._claimed |= names
            self._written |= names

    def _write_index(self) -> Path:
        weight_map = {
            e.spec.name: layout.filename for layout in self.layouts for e in layout.entries
        }
        total = sum(layout.data_bytes for layout in self.layouts)
        body = {"metadata": {"total_size": total}, "weight_map": weight_map}
        text = json.dumps(body, indent=2, sort_keys=True) + "\n"
        path = self.folder / INDEX_FILENAME
        tmp = path.with_name(path.name + ".tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            # Atomic: a reader never sees a half-written index.
            os.replace(tmp, path)
            fsync_dir(self.folder)
        except OSError as exc:
            raise _os_error(exc, path) from None
        return path


def fsync_dir(folder: Path) -> None:
    """Make new directory entries durable (POSIX only; Windows cannot open directories)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
