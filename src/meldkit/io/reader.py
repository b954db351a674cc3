"""Read single tensors from checkpoint files by byte offset, with bounded memory.

Safetensors tensors of at least ``map_min_bytes`` (1 MB by default; see
:class:`meldkit.execute.policy.EnginePolicy`) are mapped one tensor at a time (``mmap``,
private: in-place math on the result copies the pages it touches and never reaches the file),
with a read-ahead hint for the whole range. The mapping lives exactly as long as the tensor
(and its views) do, so memory stays bounded by what the executor keeps, as with a read buffer.
A map costs about half of a read into a fresh buffer: the page-cache pages are mapped, not
copied into newly zeroed memory (0.7 against 1.4-1.6 s of CPU for `med`'s 3.2 GB); below
1 MB a map's system calls cost more than the copy they save. Whole files are never mapped:
the resident memory of a long-lived mapping grows with the bytes touched, not with the
tensors alive.

Smaller tensors, tensors whose offset in the file is not a multiple of their element size, and
pinned buffers for a GPU are read with positional reads (``os.preadv``) into a fresh buffer.
Each file is opened once (lazily) and its descriptor shared by all threads; positional reads
and maps need no seek, so concurrent reads need no lock.

Pickled ``.bin`` checkpoints are loaded whole with ``torch.load(weights_only=True, mmap=True)``
(never running pickled code) and cached per file.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from meldkit.errors import InputError
from meldkit.execute.policy import DEFAULT_POLICY
from meldkit.io.computed import ComputedTensorInfo
from meldkit.io.dtypes import itemsize, torch_dtype
from meldkit.io.header import TensorInfo
from meldkit.io.index import PickleTensorInfo, pickle_refusal

if TYPE_CHECKING:
    import torch

__all__ = ["TensorReader"]

# Linux caps one read at 0x7ffff000 bytes; smaller chunks keep every call well below it.
_MAX_CHUNK = 1 << 30


def _writable_view(buf: torch.Tensor) -> memoryview:
    """A writable byte memoryview over a contiguous uint8 CPU tensor (no numpy needed)."""
    n = buf.numel()
    return memoryview((ctypes.c_char * n).from_address(buf.data_ptr())).cast("B")


class TensorReader:
    """Reads tensors described by :class:`TensorInfo` entries; thread-safe; a context manager.

    >>> with TensorReader() as reader:
    ...     t = reader.read(index.tensors["model.embed_tokens.weight"])

    ``map_min_bytes``: tensors of at least this many bytes are mapped (None: never).
    """

    def __init__(self, map_min_bytes: int | None = DEFAULT_POLICY.map_min_bytes) -> None:
        self._map_min_bytes = map_min_bytes
        self._lock = threading.Lock()
        self._fds: dict[Path, int] = {}
        self._pickles: dict[Path, dict[str, Any]] = {}
        # One lock per pickle file so two threads do not both unpickle the same file.
        self._pickle_locks: dict[Path, threading.Lock] = {}
        self._closed = False

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close every cached file descriptor and drop cached pickles. Idempotent."""
        with self._lock:
            fds, self._fds = self._fds, {}
            self._pickles.clear()
            self._closed = True
        for fd in fds.values():
            os.close(fd)

    def read(self, info: TensorInfo, device: str = "cpu", pin_memory: bool = False) -> torch.Tensor:
        """Return the tensor ``info`` describes, with the file's dtype and shape, on ``device``.

        The result is private, so callers may modify it in place (a mapped result copies the
        pages it writes; the file never changes). With ``pin_memory`` and a CUDA ``device``
        (when CUDA is available) the bytes land in a pinned buffer and are copied to the GPU
        asynchronously; on CPU the flag is ignored.
        """
        if isinstance(info, ComputedTensorInfo):
            tensor: torch.Tensor = info.produce()  # merged on demand (meldkit multi)
        elif isinstance(info, PickleTensorInfo):
            tensor = self._read_pickled(info)
        else:
            tensor = self._read_safetensors(info, _want_pinned(device, pin_memory))
        if device != "cpu":
            tensor = tensor.to(device, non_blocking=tensor.is_pinned())
        return tensor

    # -- safetensors ---------------------------------------------------------------------

    def _fd(self, path: Path) -> int:
        with self._lock:
            if self._closed:
                raise InputError(f"cannot read {path}: the reader is closed")
            fd = self._fds.get(path)
            if fd is None:
                try:
                    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
                except OSError as exc:
                    raise InputError(
                        f"cannot open {path}: {exc.strerror or exc}",
                        hint="the file was moved or deleted after planning; run again",
                    ) from None
                self._fds[path] = fd
            return fd

    def _read_safetensors(self, info: TensorInfo, pinned: bool) -> torch.Tensor:
        import torch

        dtype = torch_dtype(info.dtype)
        nbytes = info.end - info.start
        if nbytes != info.numel * itemsize(info.dtype):
            raise InputError(
                f"{info.file}: tensor '{info.name}' is {info.dtype} {list(info.shape)} but "
                f"spans {nbytes} bytes"
            )
        if self._maps(nbytes) and not pinned and info.start % itemsize(info.dtype) == 0:
            buf = self._map(info, nbytes)
        else:
            buf = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned)
            if nbytes:
                self._fill(info, buf)
        # (nbytes,) uint8 -> (numel,) dtype -> shape; a 0-dim tensor is one element, () shape
        return buf.view(dtype).reshape(info.shape)

    def _maps(self, nbytes: int) -> bool:
        """Whether a tensor of ``nbytes`` is mapped (never an empty one: nothing to map)."""
        return self._map_min_bytes is not None and nbytes >= max(self._map_min_bytes, 1)

    def _map(self, info: TensorInfo, nbytes: int) -> torch.Tensor:
        """The tensor's bytes as a private mapping of its range of the file (uint8)."""
        import numpy as np
        import torch

        fd = self._fd(info.file)
        try:
            # A mapped page past the end of the file would kill the process (SIGBUS) when
            # touched; a file that shrank since planning gets the read path's error instead.
            # (One truncated in the instant between this check and the faults below still
            # would: the price of not copying, which every mmap-based reader pays.)
            size = os.fstat(fd).st_size
            if size < info.end:
                raise _truncated(info, size - info.start)
            start = info.start - info.start % mmap.ALLOCATIONGRANULARITY
            mapped = mmap.mmap(fd, info.end - start, offset=start, access=mmap.ACCESS_COPY)
        except OSError as exc:
            raise InputError(
                f"cannot read tensor '{info.name}' from {info.file}: {exc.strerror or exc}"
            ) from None
        if hasattr(mapped, "madvise"):
            # One read-ahead request for the whole range, before the faults below walk it.
            mapped.madvise(mmap.MADV_WILLNEED)
        # Fault the pages in here, on the reader thread (one read a page; the kernel maps a
        # few neighbours per fault): the math would otherwise take the faults, and on a cold
        # cache wait for the disk. numpy's reduction releases the GIL while it faults.
        np.frombuffer(mapped, dtype=np.uint8)[:: mmap.PAGESIZE].max()
        # The tensor holds the mapping; it is unmapped when the tensor and its views are freed.
        return torch.frombuffer(mapped, dtype=torch.uint8, count=nbytes, offset=info.start - start)

    def _fill(self, info: TensorInfo, buf: torch.Tensor) -> None:
        fd = self._fd(info.file)
        view = _writable_view(buf)
        done, total = 0, len(view)
        while done < total:
            chunk = view[done : min(total, done + _MAX_CHUNK)]
            try:
                got = _pread_into(fd, chunk, info.start + done)
            except OSError as exc:
                raise InputError(
                    f"cannot read tensor '{info.name}' from {info.file}: {exc.strerror or exc}"
                ) from None
            if got == 0:
                raise _truncated(info, done)
            done += got

    # -- pickled .bin ----------------------------------------------------------------------

    def _read_pickled(self, info: PickleTensorInfo) -> torch.Tensor:
        state = self._pickle_state(info.file)
        tensor = state.get(info.name)
        if tensor is None:
            raise InputError(f"{info.file} has no tensor '{info.name}'")
        # The state is cached and (with mmap) backed by the file; a clone gives the caller
        # private memory, like the safetensors path, so in-place math cannot corrupt later
        # reads of the same name.
        return tensor.clone()  # type: ignore[no-any-return]

    def _pickle_state(self, path: Path) -> dict[str, Any]:
        with self._lock:
            if self._closed:
                raise InputError(f"cannot read {path}: the reader is closed")
            state = self._pickles.get(path)
            if state is not None:
                return state
            file_lock = self._pickle_locks.setdefault(path, threading.Lock())
        with file_lock:
            with self._lock:
                state = self._pickles.get(path)
            if state is None:
                state = _load_pickle(path)
                with self._lock:
                    self._pickles[path] = state
            return state


def _truncated(info: TensorInfo, done: int) -> InputError:
    """The error for a file that ends ``done`` bytes into the tensor ``info``."""
    return InputError(
        f"{info.file} ended after {info.start + max(done, 0)} bytes while reading tensor "
        f"'{info.name}' (bytes {info.start}..{info.end}); the file was truncated",
        hint="the file changed after planning; restore it and run again",
    )


def _want_pinned(device: str, pin_memory: bool) -> bool:
    if not (pin_memory and device.startswith("cuda")):
        return False
    import torch

    return bool(torch.cuda.is_available())


def _pread_into(fd: int, chunk: memoryview, offset: int) -> int:
    """Read into ``chunk`` at ``offset``; returns the byte count (0 at end of file)."""
    if hasattr(os, "preadv"):
        return os.preadv(fd, [chunk], offset)
    # Platforms with pread but no preadv (older macOS) fall back to pread: one extra copy.
    data = os.pread(fd, len(chunk), offset)
    chunk[: len(data)] = data
    return len(data)


def _load_pickle(path: Path) -> dict[str, Any]:
    import torch

    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            # mmap needs the zip format; legacy (pre-1.6) files must be read whole.
            if "mmap" not in str(exc):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    # Any exception: a corrupt or hostile pickle makes torch.load raise almost anything.
    except Exception as exc:
        raise pickle_refusal(path, exc) from None
    if not isinstance(state, dict):
        raise InputError(f"{path}: expected a dict of tensors, found {type(state).__name__}")
    return state
