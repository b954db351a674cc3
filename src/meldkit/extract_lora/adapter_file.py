"""``adapter_model.safetensors`` written one tensor at a time, before its shapes are known.

The merge writer (:mod:`meldkit.io.writer`) fixes every tensor's offset from the plan; here the
ranks, and so the factor shapes, are only known once each module's SVD has run. The header's
room is therefore reserved up front from the tensor names (every number in it given 20
digits), tensors are appended after it as they are computed, and the header is written last,
padded with spaces, which the safetensors format allows ("the header may be trailing padded
with whitespace"). No tensor is held after it is written.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from meldkit.errors import MergeRuntimeError, disk_full, is_disk_full
from meldkit.io.dtypes import code_of

# The merge writer's byte view and chunked pwrite: the same bytes, written the same way.
from meldkit.io.writer import _pwrite_all, _tensor_view

if TYPE_CHECKING:
    import torch

__all__ = ["AdapterFileWriter", "ADAPTER_WEIGHTS"]

ADAPTER_WEIGHTS = "adapter_model.safetensors"
_NUMBER = "9" * 20  # room for any offset or dimension
_METADATA = {"format": "pt"}


def _entry_bound(name: str, ndim: int) -> int:
    shape = [int(_NUMBER)] * ndim
    entry = {"dtype": "BF16", "shape": shape, "data_offsets": [int(_NUMBER)] * 2}
    return len(json.dumps(name)) + len(json.dumps(entry, separators=(",", ":"))) + 2


class AdapterFileWriter:
    """Append tensors to ``path``; :meth:`finish` writes the header. ``names`` are the names
    (with their dimension counts) that may be written: they size the header's room."""

    def __init__(self, path: Path, names: Iterable[tuple[str, int]]) -> None:
        bound = len(json.dumps({"__metadata__": _METADATA}, separators=(",", ":"))) + 2
        bound += sum(_entry_bound(n, d) for n, d in names)
        self.path = path
        self._room = (bound + 7) // 8 * 8  # 8-byte aligned data, as safetensors writes
        self._entries: dict[str, dict[str, object]] = {}
        self._end = 0  # bytes of tensor data written
        try:
            self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            raise self._error(exc) from None

    def _error(self, exc: OSError) -> MergeRuntimeError:
        if is_disk_full(exc):
            return disk_full(self.path)
        return MergeRuntimeError(f"cannot write {self.path}: {exc.strerror or exc}")

    @property
    def data_bytes(self) -> int:
        """Bytes of tensor data written so far."""
        return self._end

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append ``tensor`` under ``name`` (each name once)."""
        if self._fd is None or name in self._entries:
            raise MergeRuntimeError(f"{self.path}: '{name}' written twice or after finishing")
        view, owner = _tensor_view(tensor)
        try:
            _pwrite_all(self._fd, view, 8 + self._room + self._end)
        except OSError as exc:
            raise self._error(exc) from None
        del owner
        begin, self._end = self._end, self._end + len(view)
        self._entries[name] = {
            "dtype": code_of(tensor.dtype),
            "shape": list(tensor.shape),
            "data_offsets": [begin, self._end],
        }

    def finish(self) -> None:
        """Write the header into its room, flush to disk and close."""
        if self._fd is None:
            return
        header = json.dumps(
            {"__metadata__": _METADATA, **self._entries}, separators=(",", ":")
        ).encode()
        if len(header) > self._room:  # names not announced to __init__: a bug
            raise MergeRuntimeError(f"{self.path}: header larger than the room reserved")
        header += b" " * (self._room - len(header))
        try:
            os.pwrite(self._fd, struct.pack("<Q", self._room) + header, 0)
            os.fsync(self._fd)
        except OSError as exc:
            raise self._error(exc) from None
        finally:
            self.close()

    def close(self) -> None:
        """Close the file without finishing it (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
