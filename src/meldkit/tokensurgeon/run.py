"""A whole transplant: plan, rebuild the vocabulary rows, stream every other tensor through,
write config, tokenizer, card and report into a temporary folder, and publish it atomically."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from meldkit.execute.device import resolve_device
from meldkit.execute.output import check_output_folder, prepare_partial, publish
from meldkit.io.header import TensorInfo
from meldkit.io.hub import resolve_model_folder
from meldkit.io.index import PickleTensorInfo
from meldkit.io.reader import TensorReader
from meldkit.io.writer import ShardedWriter, plan_shards
from meldkit.plan.architecture import find_config_key, set_config_key
from meldkit.tokenizer.files import copy_tokenizer_files
from meldkit.tokensurgeon.options import SurgeonOptions
from meldkit.tokensurgeon.plan import SurgeryPlan, plan_surgery

__all__ = ["TransplantResult", "transplant_tokenizer", "REPORT_FILENAME"]

REPORT_FILENAME = "tokensurgeon.json"
_SPECIAL_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "mask_token_id")
_COPY_BLOCK_ELEMENTS = 1 << 26  # rows are copied in blocks of at most this many elements


@dataclass
class TransplantResult:
    """What a transplant did: the output folder, per-matrix row counts, the evaluation
    (None unless asked for) and the wall time."""

    out: Path
    counts: dict[str, dict[str, int]]
    evaluation: dict[str, Any] | None
    seconds: float


def _rows_block(info: TensorInfo, r0: int, r1: int) -> TensorInfo:
    row_bytes = info.nbytes // info.shape[0]
    return replace(
        info,
        shape=(r1 - r0, *info.shape[1:]),
        start=info.start + r0 * row_bytes,
        end=info.start + r1 * row_bytes,
    )


def _copy_tensor(reader: TensorReader, writer: ShardedWriter, info: TensorInfo) -> None:
    """Byte copy of one tensor in row blocks, so memory stays bounded for any size."""
    numel = math.prod(info.shape)
    # A pickled tensor is read whole (torch.load(weights_only=True)), never by byte range.
    small = numel <= _COPY_BLOCK_ELEMENTS or isinstance(info, PickleTensorInfo)
    if len(info.shape) == 0 or small or info.shape[0] == 0:
        writer.write(info.name, reader.read(info))
        return
    step = max(1, _COPY_BLOCK_ELEMENTS // max(1, numel // info.shape[0]))
    for r0 in range(0, info.shape[0], step):
        r1 = min(info.shape[0], r0 + step)
        writer.write(info.name, reader.read(_rows_block(info, r0, r1)), row_start=r0)


def _special_ids(plan: SurgeryPlan) -> dict[str, Any]:
    """The donor's special-token ids: its config's, else its tokenizer's."""
    cfg = plan.donor.index.config or {}
    roles = plan.donor.vocab.special_ids
    out: dict[str, Any] = {}
    for key in _SPECIAL_ID_KEYS:
        found = find_config_key(cfg, (key,))
        role = key.removesuffix("_token_id")
        out[key] = found[1] if found else roles.get(role)
    return out


def _output_config(plan: SurgeryPlan) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(json.dumps(plan.model.index.config or {}))
    found = find_config_key(config, ("vocab_size",))
    set_config_key(config, found[0] if found else "vocab_size", plan.rows)
    for key, value in _special_ids(plan).items():
        where = find_config_key(config, (key,))
        set_config_key(config, where[0] if where else key, value)
    donor_cfg = plan.donor.index.config or {}
    if "padding_side" in donor_cfg:
        config["padding_side"] = donor_cfg["padding_side"]
    return config


def _write_generation_config(plan: SurgeryPlan, tmp: Path) -> None:
    src = plan.model.folder / "generation_config.json"
    if not src.is_file():
        return
    data = json.loads(src.read_text(encoding="utf-8"))
    ids = _special_ids(plan)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if key in data or ids[key] is not None:
            data[key] = ids[key]
    (tmp / "generation_config.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _write_card(tmp: Path, model: str, donor: str, report: dict[str, Any]) -> None:
    lines = [
        "---",
        "library_name: transformers",
        "tags:",
        "- meldkit",
        "- tokensurgeon",
        "---",
        "",
        "# Tokenizer transplant",
        "",
        f"{model} with the tokenizer of {donor}, made with `meldkit tokensurgeon` "
        f"(approximation: {report['options']['approximation']}).",
        "",
        "| matrix | copied (exact) | matched (byte / prefix) | approximated | zeroed (junk / unused) |",
        "|---|---|---|---|---|",
    ]
    for matrix, c in report["counts"].items():
        lines.append(
            f"| {matrix} | {c['exact']} | {c['byte']} / {c['prefix']} | {c['approximated']} "
            f"| {c['junk']} / {c['unused']} |"
        )
    (tmp / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def transplant_tokenizer(
    model: str | Path,
    donor: str | Path,
    out: str | Path,
    options: SurgeonOptions | None = None,
    *,
    evaluate: bool = False,
    overwrite: bool = False,
    max_shard_bytes: int = 5 * 1024**3,
) -> TransplantResult:
    """Give MODEL the DONOR's tokenizer: rebuild MODEL's embedding and output rows in the
    donor's vocabulary, copy every other tensor, and write the donor's tokenizer files, an
    updated config (``vocab_size``, special-token ids) and a card into ``out``.

    MODEL and DONOR are local folders or hub ids. With ``evaluate``, each method's held-out
    cosine similarity is measured too (in the result and in ``out/tokensurgeon.json``).
    """
    start = time.perf_counter()
    opts = options or SurgeonOptions()
    opts.check()
    opts = replace(opts, device=resolve_device(opts.device))
    model_dir = resolve_model_folder(str(model))
    donor_dir = resolve_model_folder(str(donor))
    out_dir = Path(out)
    check_output_folder(out_dir, [model_dir, donor_dir], overwrite)
    plan = plan_surgery(model_dir, donor_dir)
    from meldkit.tokensurgeon.report import evaluate_methods
    from meldkit.tokensurgeon.rows import load_matrices, rebuild_rows

    partial = prepare_partial(out_dir, resume=False, overwrite=overwrite)
    try:
        with TensorReader() as reader:
            mats = load_matrices(plan, reader, opts)
            rebuilt = rebuild_rows(plan, mats, opts)
            evaluation = evaluate_methods(plan, mats, rebuilt, opts) if evaluate else None
            del mats
            layouts = plan_shards(plan.specs, max_shard_bytes)
            with ShardedWriter(partial.path, layouts) as writer:
                for name, info in plan.model.index.tensors.items():
                    if name in rebuilt.tensors:
                        writer.write(name, rebuilt.tensors.pop(name))
                    else:
                        _copy_tensor(reader, writer, info)
        tmp = partial.path
        (tmp / "config.json").write_text(
            json.dumps(_output_config(plan), indent=2) + "\n", encoding="utf-8"
        )
        _write_generation_config(plan, tmp)
        copy_tokenizer_files(plan.donor.folder, tmp)
        counts = {m: a.counts for m, a in rebuilt.assignments.items()}
        report = {"counts": counts, "options": asdict(opts), "evaluation": evaluation}
        (tmp / REPORT_FILENAME).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        _write_card(tmp, str(model), str(donor), report)
        publish(tmp, out_dir, overwrite=overwrite)
    except BaseException:
        partial.remove()
        raise
    finally:
        partial.release()
    return TransplantResult(out_dir, counts, evaluation, time.perf_counter() - start)
