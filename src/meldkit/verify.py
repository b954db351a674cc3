"""``meldkit verify OUT``: check that a model folder is complete, consistent and readable.

Checks, each reported as one line naming the file or tensor:

* the weights: ``model.safetensors``, or shards plus ``model.safetensors.index.json`` whose
  ``weight_map`` covers every shard and every tensor exactly once (no stray shard, no tensor
  stored twice, no entry pointing at a file that does not hold it; ``total_size`` agrees);
* every header is valid and every tensor reads back in full, with no NaN or Inf;
* ``config.json`` agrees with the weights: layer count, hidden size, vocabulary size;
* every ``*.json`` file parses, and the tokenizer loads with transformers (when it is
  installed; never with ``trust_remote_code``) and fits in the embedding.

Tensors are read one at a time with the same positional reader as a merge, so memory stays at
one tensor whatever the model size. Nothing here raises: every failure becomes a problem line.

A weight file that cannot be read (missing, truncated, a corrupt header) is one problem, its
root cause: the checks that would only repeat it (each index entry pointing at the file, the
index's total size, the layers whose tensors it holds) are left out.
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meldkit.errors import MeldError
from meldkit.io.header import MAX_HEADER_BYTES, TensorInfo, read_header

__all__ = ["VerifyReport", "verify_folder", "verify_report"]

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
# NaN/Inf findings beyond this many tensors are summarised in one line.
_MAX_NONFINITE_LINES = 10
_HIDDEN_KEYS = ("hidden_size", "n_embd", "d_model")
_VOCAB_KEYS = ("vocab_size", "n_vocab", "padded_vocab_size")
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
)


@dataclass
class VerifyReport:
    """What :func:`verify_report` found: ``problems`` (the folder is bad) and ``notes`` (checks
    that could not run, e.g. no transformers to load the tokenizer)."""

    folder: Path
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tensors: int = 0
    files: int = 0
    # Weight files whose header could not be read: already reported, and the checks that
    # depend on their tensors are skipped rather than reported once per tensor.
    unreadable: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_folder(folder: str | os.PathLike[str]) -> list[str]:
    """Check a model folder; returns one line per problem (empty when the folder is sound)."""
    return verify_report(folder).problems


def verify_report(folder: str | os.PathLike[str]) -> VerifyReport:
    """Check a model folder; see the module docstring for the list of checks."""
    report = VerifyReport(Path(folder))
    try:
        _verify(report)
    except Exception as exc:  # a checker must report, never crash; keep what was found so far
        report.problems.append(f"verify stopped early: {type(exc).__name__}: {exc}")
    return report


def _verify(report: VerifyReport) -> None:
    path = report.folder
    if not path.exists():
        report.problems.append(f"{path} does not exist")
        return
    if not path.is_dir():
        report.problems.append(f"{path} is not a folder")
        return
    jsons = _check_json_files(report)
    tensors = _check_weights(report, jsons.get(INDEX_NAME))
    if tensors is None:
        return
    report.tensors = len(tensors)
    _check_tensor_data(report, tensors)
    config = jsons.get("config.json")
    if "config.json" not in jsons:
        report.problems.append("config.json is missing")
    elif isinstance(config, dict):
        _check_config(report, config, tensors)
    _check_tokenizer(report, tensors, jsons.get("tokenizer_config.json"), config)


def _check_json_files(report: VerifyReport) -> dict[str, Any]:
    """Parse every top-level ``*.json``; returns name -> document (None when unparsable)."""
    docs: dict[str, Any] = {}
    for p in sorted(report.folder.glob("*.json")):
        try:
            docs[p.name] = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            docs[p.name] = None
            report.problems.append(f"{p.name} is not valid JSON ({_first_line(exc)})")
    if (
        "config.json" in docs
        and docs["config.json"] is not None
        and not isinstance(docs["config.json"], dict)
    ):
        report.problems.append("config.json is not a JSON object")
    return docs


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


# -- weights and index ----------------------------------------------------------------------


def _check_weights(report: VerifyReport, index_doc: Any) -> dict[str, TensorInfo] | None:
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


def _check_tensor_data(report: VerifyReport, tensors: dict[str, TensorInfo]) -> None:
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


# -- config.json ------------------------------------------------------------------------------


def _config_int(config: dict[str, Any], keys: tuple[str, ...]) -> tuple[str, int] | None:
    from meldkit.plan.architecture import find_config_key

    found = find_config_key(config, keys)
    if found is None or not isinstance(found[1], int) or isinstance(found[1], bool):
        return None
    return found[0], found[1]


def _check_config(
    report: VerifyReport, config: dict[str, Any], tensors: dict[str, TensorInfo]
) -> None:
    from meldkit.plan.architecture import infer_layout

    layout = infer_layout(tensors, config)
    if not report.unreadable:  # an unreadable file's layers look missing: it is the problem
        _check_layers(report, config, layout)
    embed = tensors.get(layout.input_embedding) if layout.input_embedding else None
    if embed is None or len(embed.shape) != 2:
        return
    rows, width = embed.shape
    hidden = _config_int(config, _HIDDEN_KEYS)
    if hidden is not None and hidden[1] != width:
        report.problems.append(
            f"config.json says {hidden[0]}={hidden[1]} but {embed.name} is {list(embed.shape)}"
        )
    vocab = _config_int(config, _VOCAB_KEYS)
    if vocab is not None and vocab[1] != rows:
        report.problems.append(
            f"config.json says {vocab[0]}={vocab[1]} but {embed.name} has {rows} rows"
        )
    head = tensors.get(layout.output_head) if layout.output_head else None
    if head is not None and len(head.shape) == 2 and head.shape[0] != rows:
        report.problems.append(f"{head.name} has {head.shape[0]} rows but {embed.name} has {rows}")


def _check_layers(report: VerifyReport, config: dict[str, Any], layout: Any) -> None:
    """The layer count of ``config.json`` against the layers the weights hold."""
    from meldkit.plan.architecture import LAYER_COUNT_KEYS

    layers = _config_int(config, LAYER_COUNT_KEYS)
    if layout.stack_prefix is not None:
        if layers is not None and layers[1] != layout.num_layers:
            report.problems.append(
                f"config.json says {layers[0]}={layers[1]} but the weights hold {layout.num_layers} layers"
            )
        missing = [i for i in range(layout.num_layers) if i not in layout.layer_suffixes]
        if missing:
            shown = ", ".join(map(str, missing[:10]))
            report.problems.append(
                f"layers {shown} of {layout.stack_prefix.rstrip('.')} have no tensors"
            )
    elif layers is not None and layers[1] > 0:
        report.problems.append(
            f"config.json says {layers[0]}={layers[1]} but the weights hold no layers"
        )


# -- tokenizer ----------------------------------------------------------------------------------


def _check_tokenizer(
    report: VerifyReport, tensors: dict[str, TensorInfo], tok_config: Any, config: Any
) -> None:
    folder = report.folder
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        report.notes.append("no tokenizer files in the folder; the tokenizer was not checked")
        return
    if isinstance(tok_config, dict) and tok_config.get("auto_map"):
        # Loading it would need trust_remote_code, which meldkit never turns on by itself.
        report.notes.append(
            "the tokenizer needs custom code from the folder (auto_map); meldkit does not run "
            "such code, so the tokenizer was not loaded"
        )
        return
    if importlib.util.find_spec("transformers") is None:
        report.notes.append(
            "transformers is not installed; the tokenizer was not loaded (pip install transformers)"
        )
        return
    import warnings

    try:
        from transformers import AutoTokenizer

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tok = AutoTokenizer.from_pretrained(
                str(folder), trust_remote_code=False, local_files_only=True
            )
        size = len(tok)
    except Exception as exc:  # transformers raises many unrelated types here
        report.problems.append(
            f"the tokenizer does not load: {type(exc).__name__}: {_first_line(exc)}"
        )
        return
    from meldkit.plan.architecture import infer_layout

    layout = infer_layout(tensors, config if isinstance(config, dict) else None)
    embed = tensors.get(layout.input_embedding) if layout.input_embedding else None
    if embed is not None and embed.shape and size > embed.shape[0]:
        report.problems.append(
            f"the tokenizer has {size} tokens but {embed.name} has only {embed.shape[0]} rows"
        )
