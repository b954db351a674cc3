"""Safetensors header parsing: names, dtypes, shapes and byte ranges, without tensor bytes.

A safetensors file is ``u64 little-endian N`` + ``N`` bytes of JSON + the data buffer. Every
entry is checked against the file: a corrupt or hostile file raises :class:`InputError` naming
the file, never an arbitrary exception. No torch import.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from meldkit.errors import InputError

__all__ = ["TensorInfo", "DTYPE_SIZES", "read_header", "parse_header_bytes", "MAX_HEADER_BYTES"]

# safetensors dtype code -> bytes per element
DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2"})
MAX_HEADER_BYTES = 100_000_000  # the safetensors reference limit


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: ``file``, absolute byte range ``[start, end)``, dtype, shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES


def _bad(path: Path, what: str) -> InputError:
    return InputError(
        f"{path}: not a valid safetensors file ({what})",
        hint="the file is corrupt or truncated; download or copy it again",
    )


def parse_header_bytes(path: Path, raw: bytes, file_size: int) -> dict[str, TensorInfo]:
    """Validate the JSON header ``raw`` of a file of ``file_size`` bytes; return its tensors."""
    try:
        header = json.loads(raw.decode("utf-8"))
    # ValueError, not just JSONDecodeError: Python also raises a bare ValueError for integer
    # literals over its 4300-digit conversion limit.
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _bad(path, f"header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise _bad(path, "header is not a JSON object")
    data_start = 8 + len(raw)
    data_len = file_size - data_start
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise _bad(path, f"entry for '{name}' is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
            raise _bad(path, f"tensor '{name}' has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise _bad(path, f"tensor '{name}' has an invalid shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        ):
            raise _bad(path, f"tensor '{name}' has invalid data_offsets {offsets!r}")
        begin, end = offsets
        if not 0 <= begin <= end <= data_len:
            raise _bad(
                path,
                f"tensor '{name}' lies at bytes {begin}..{end} but the data section has "
                f"{max(data_len, 0)} bytes (truncated file?)",
            )
        numel = 1
        for d in shape:
            numel *= d
        if numel * DTYPE_SIZES[dtype] != end - begin:
            raise _bad(
                path,
                f"tensor '{name}' is {dtype} {shape} ({numel * DTYPE_SIZES[dtype]} bytes) "
                f"but occupies {end - begin} bytes",
            )
        tensors[name] = TensorInfo(
            name, dtype, tuple(shape), path, data_start + begin, data_start + end
        )
    _check_no_overlap(path, tensors)
    return tensors


def _check_no_overlap(path: Path, tensors: dict[str, TensorInfo]) -> None:
    # safetensors itself rejects tensors whose bytes overlap; two names sharing bytes means a
    # corrupt or forged header. Empty tensors occupy nothing and may sit anywhere.
    spans = sorted((t.start, t.end, t.name) for t in tensors.values() if t.end > t.start)
    for (_, prev_end, prev), (start, _, name) in zip(spans, spans[1:], strict=False):
        if start < prev_end:
            raise _bad(path, f"tensors '{prev}' and '{name}' overlap")


def read_header(path: str | os.PathLike[str]) -> dict[str, TensorInfo]:
    """Read and validate the header of one ``.safetensors`` file (reads no tensor bytes)."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(8)
            if len(head) < 8:
                raise _bad(p, f"file is {size} bytes, shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES:
                raise _bad(p, f"header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit")
            if 8 + n > size:
                raise _bad(p, f"header length {n} runs past the end of the {size}-byte file")
            raw = fh.read(n)
    except OSError as exc:
        raise InputError(
            f"cannot read {p}: {exc.strerror or exc}", hint="check the path and its permissions"
        ) from None
    return parse_header_bytes(p, raw, size)
