"""The weights half of ``meldkit verify`` (see :mod:`meldkit.verify`): weight files, index, data.

* :func:`check_weights` reads the header of every weight file (``model.safetensors``, the
  shards an index names, stray ``*.safetensors`` files, or ``pytorch_model*.bin``) and checks
  ``model.safetensors.index.json`` against them: every shard listed exists and is listed, every
  tensor is stored once, in the file the index says, and ``total_size`` agrees. A file shorter
  than its own header says is reported as truncated.
* :func:`check_tensor_data` reads every tensor back, one at a time with the positional reader a
  merge uses, and reports NaN and Inf values.

Each failure is appended to the report as one problem line; a weight file that cannot be read
is recorded in ``report.unreadable`` so the checks that would only repeat it are skipped.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meldkit.errors import MeldError
from meldkit.io.header import MAX_HEADER_BYTES, TensorInfo, read_header

if TYPE_CHECKING:
    from meldkit.verify import VerifyReport

__all__ = ["INDEX_NAME", "SINGLE_NAME", "check_tensor_data", "check_weights"]

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
# NaN/Inf findings beyond this many tensors are summarised in one line.
_MAX_NONFINITE_LINES = 10


# -- weights and index ----------------------------------------------------------------------


def check_weights(report: VerifyReport, index_doc: Any) -> dict[str, TensorInfo] | None:
    """Check the weight files and the index; returns every tensor (None when unusable)."""
    folder = report.folder
    index_path = folder / INDEX_NAME
    all_st = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    if index_path.exists():
        if index_doc is None:
            return None  # already reported as invalid JSON
        return _check_indexed(report, index_doc, all_st)
    if (folder / SINGLE_NAME).is_file():
        files = [folder / SINGLE_NAME]
        stray = [p.name for p in all_st if p.name.startswith("model-")]
        if stray:
            report.problems.append(
                f"{', '.join(stray)} lie beside {SINGLE_NAME} without an index (left over from another model?)"
            )
    elif all_st:
        report.problems.append(
            f"{len(all_st)} .safetensors file(s) but no {INDEX_NAME} to say which tensors they hold"
        )
        files = all_st
    elif any(folder.glob("pytorch_model*.bin")):
        # Not something meldkit writes, but verify also serves to check an input before a merge.
        from meldkit.io.index import open_index

        try:
            index = open_index(folder)  # torch.load(weights_only=True): no code from the file runs
        except MeldError as exc:
            report.problems.append(exc.message)
            return None
        report.files = len(index.files)
        return dict(index.tensors)
    else:
        report.problems.append(
            f"no weights: neither {SINGLE_NAME} nor {INDEX_NAME} is in the folder"
        )
        return None
    report.files = len(files)
    tensors: dict[str, TensorInfo] = {}
    for f in files:
        for name, info in (_header(report, f) or {}).items():
            if name in tensors:
                report.problems.append(
                    f"tensor {name} is stored twice: in {tensors[name].file.name} and {f.name}"
                )
            else:
                tensors[name] = info
    return tensors


def _header(report: VerifyReport, path: Path) -> dict[str, TensorInfo] | None:
    """The tensors of ``path``; None (with one problem line) when it cannot be read."""
    truncated = _truncation(path)
    if truncated is not None:
        report.problems.append(truncated)
        report.unreadable.append(path.name)
        return None
    try:
        return read_header(path)
    except MeldError as exc:
        report.problems.append(exc.message)
        report.unreadable.append(path.name)
        return None


def _truncation(path: Path) -> str | None:
    """``<file> is truncated: ...`` when ``path`` is shorter than its own header says (the
    usual damage of an interrupted download or copy), else None."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"{path.name} is truncated: file has {size:,} bytes, fewer than a header"
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES:
                return None  # not a header length at all: read_header says so
            if 8 + n > size:
                have = size - 8
                return f"{path.name} is truncated: header says {n:,} bytes of header, file has {have:,}"
            header = json.loads(fh.read(n))
    except (OSError, ValueError, RecursionError, MemoryError, OverflowError):
        return None  # read_header reports it precisely
    need = _data_bytes(header)
    have = size - 8 - n
    if need > have:
        return f"{path.name} is truncated: header says {need:,} bytes of data, file has {have:,}"
    return None


def _data_bytes(header: Any) -> int:
    """How long the data section must be for every tensor of ``header`` (0 when unknown)."""
    if not isinstance(header, dict):
        return 0
    ends = [
        entry["data_offsets"][1]
        for entry in header.values()
        if isinstance(entry, dict)
        and isinstance(entry.get("data_offsets"), list)
        and len(entry["data_offsets"]) == 2
        and isinstance(entry["data_offsets"][1], int)
    ]
    return max(ends, default=0)


def _check_indexed(
    report: VerifyReport, doc: Any, all_st: list[Path]
) -> dict[str, TensorInfo] | None:
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        report.problems.append(f"{INDEX_NAME} has no 'weight_map' (or an empty one)")
        return None
    bad = [k for k, v in weight_map.items() if not isinstance(v, str)]
    if bad:
        report.problems.append(
            f"{INDEX_NAME}: tensor {bad[0]} maps to {weight_map[bad[0]]!r}, not a file name"
        )
        return None
    listed = list(dict.fromkeys(weight_map.values()))
    headers: dict[str, dict[str, TensorInfo]] = {}
    for filename in listed:
        if "/" in filename or "\\" in filename or filename in ("", ".", ".."):
            report.problems.append(
                f"{INDEX_NAME} names {filename!r}, which is not a file in the folder"
            )
            report.unreadable.append(filename)
            continue
        path = report.folder / filename
        if not path.is_file():
            report.problems.append(f"{INDEX_NAME} lists {filename}, which does not exist")
            report.unreadable.append(filename)
            continue
        header = _header(report, path)
        if header is not None:
            headers[filename] = header
    report.files = len(headers)
    stray = [p.name for p in all_st if p.name not in weight_map.values()]
    for name in stray:
        report.problems.append(f"{name} is not listed in {INDEX_NAME}")
    tensors: dict[str, TensorInfo] = {}
    for filename, header in headers.items():
        for name, info in header.items():
            if name in tensors:
                report.problems.append(
                    f"tensor {name} is stored twice: in {tensors[name].file.name} and {filename}"
                )
                continue
            tensors[name] = info
            if name not in weight_map:
                report.problems.append(f"tensor {name} in {filename} is missing from {INDEX_NAME}")
            elif weight_map[name] != filename:
                report.problems.append(
                    f"tensor {name} is in {filename} but {INDEX_NAME} says {weight_map[name]}"
                )
    for name, filename in weight_map.items():
        if filename in headers and name not in headers[filename]:
            report.problems.append(
                f"{INDEX_NAME} maps tensor {name} to {filename}, which does not hold it"
            )
    meta = doc.get("metadata")
    total = meta.get("total_size") if isinstance(meta, dict) else None
    if isinstance(total, int) and not isinstance(total, bool) and not report.unreadable:
        actual = sum(t.nbytes for t in tensors.values())
        if total != actual:
            report.problems.append(
                f"{INDEX_NAME} says total_size {total} but the tensors hold {actual} bytes"
            )
    return tensors


# -- tensor data ------------------------------------------------------------------------------


def check_tensor_data(report: VerifyReport, tensors: dict[str, TensorInfo]) -> None:
    """Read every tensor back (one at a time) and look for NaN and Inf."""
    import torch

    from meldkit.io.reader import TensorReader

    nonfinite: list[str] = []
    with TensorReader() as reader:
        for name, info in tensors.items():
            try:
                t = reader.read(info)
            except MeldError as exc:
                report.problems.append(exc.message)
                continue
            if not info.is_float or t.numel() == 0:
                continue
            if t.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
                t = t.float()  # float8: isfinite is not implemented for every float8 kind
            bad = int((~torch.isfinite(t)).sum())
            del t
            if bad:
                nonfinite.append(f"tensor {name} ({info.file.name}) has {bad} NaN or Inf value(s)")
    report.problems.extend(nonfinite[:_MAX_NONFINITE_LINES])
    if len(nonfinite) > _MAX_NONFINITE_LINES:
        report.problems.append(
            f"... and {len(nonfinite) - _MAX_NONFINITE_LINES} more tensors with NaN or Inf values"
        )
