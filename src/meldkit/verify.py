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

This module runs the checks and holds the report, the JSON files, ``config.json`` and the
tokenizer; the weight files, their index and the tensor data are checked in
:mod:`meldkit.verify_weights`.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meldkit.io.header import TensorInfo
from meldkit.verify_weights import INDEX_NAME as INDEX_NAME
from meldkit.verify_weights import SINGLE_NAME as SINGLE_NAME
from meldkit.verify_weights import check_tensor_data, check_weights

__all__ = ["VerifyReport", "verify_folder", "verify_report"]

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
    tensors = check_weights(report, jsons.get(INDEX_NAME))
    if tensors is None:
        return
    report.tensors = len(tensors)
    check_tensor_data(report, tensors)
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
