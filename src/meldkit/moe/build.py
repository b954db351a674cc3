"""Building a planned MoE: routers, then every tensor streamed into the sharded writer.

The output folder is made as merges make theirs (:mod:`meldkit.execute.output`): a temporary
folder beside the destination, locked, renamed into place only when complete; ``resume``
continues an interrupted build from the shards its journal vouches for
(:mod:`meldkit.execute.journal`). Tensors are computed one block at a time (a fused expert
tensor one expert at a time), so memory holds one expert projection in float32 and its cast,
whatever the expert count.

Expert noise is seeded per (seed, expert, layer, projection), so the fused and the per-expert
layouts get the same noise, and a resumed build the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from meldkit.errors import MergeRuntimeError, disk_full, is_disk_full
from meldkit.execute.device import resolve_device
from meldkit.execute.heap import release_free_memory
from meldkit.execute.journal import Journal
from meldkit.execute.output import (
    check_free_space,
    check_output_folder,
    partial_folder,
    prepare_partial,
    publish,
)
from meldkit.io.dtypes import torch_dtype
from meldkit.io.writer import ShardedWriter
from meldkit.moe.plan import MoePlan
from meldkit.moe.routers import degenerate_layers, degenerate_warning, gate_vectors
from meldkit.moe.sources import SourceReader
from meldkit.moe.tensors import Block, MoeTensor

__all__ = ["BuildOptions", "build_moe", "expert_noise", "partial_path"]


@dataclass(frozen=True)
class BuildOptions:
    """How to run a planned build (the plan fixes what is written)."""

    device: str = "cpu"
    seed: int | None = None
    quiet: bool = False
    copy_tokenizer: bool = True
    write_model_card: bool = True
    overwrite: bool = False
    resume: bool = False
    layer_by_layer: bool = False  # hidden-state routers: run the base one layer at a time


def _ignore(message: str) -> None:
    pass


def expert_noise(
    shape: tuple[int, ...], seed: int, expert: int, layer: int, projection: str
) -> torch.Tensor:
    """The N(0, 1) noise added (times ``noise_scale``) to one expert projection, float32."""
    key = f"{seed}:{expert}:{layer}:{projection}".encode()
    gen = torch.Generator(device="cpu").manual_seed(
        int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & ((1 << 63) - 1)
    )
    return torch.randn(shape, generator=gen, dtype=torch.float32)


def _fingerprint(plan: MoePlan, device: str, seed: int) -> str:
    """A hash of what decides the shards' bytes: recipe, options, seed, layout, inputs."""
    from meldkit import __version__

    inputs = {}
    for key, model in sorted(plan.models.items()):
        folders = [model.folder, *([model.lora_folder] if model.lora_folder else [])]
        inputs[key] = [
            [p.name, p.stat().st_size, p.stat().st_mtime_ns]
            for folder in folders
            for p in sorted(folder.iterdir())
            if p.is_file()
        ]
    doc = {
        "meldkit": __version__,
        "tool": "moe",
        "recipe": plan.config.source_text or repr(plan.config),
        "options": asdict(plan.options),
        "device": device.split(":")[0],
        "seed": seed,
        "shards": [[s.filename, hashlib.sha256(s.header).hexdigest()] for s in plan.shards],
        "inputs": inputs,
    }
    text = json.dumps(doc, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class _TensorMaker:
    """Computes each output tensor (or block) and hands it to the writer."""

    def __init__(
        self, plan: MoePlan, reader: SourceReader, gates: torch.Tensor, seed: int, device: str
    ) -> None:
        self.plan, self.reader, self.gates = plan, reader, gates
        self.seed, self.device = seed, device
        self.dtype = torch_dtype(plan.dtype)

    def write(self, tensor: MoeTensor, writer: ShardedWriter) -> None:
        name, n = tensor.name, self.plan.n_routed
        if tensor.kind == "copy":
            assert tensor.source is not None
            out = self.reader.read(tensor.source.model, tensor.source.name)
            writer.write(name, out.to(self.dtype).contiguous())
        elif tensor.kind == "zeros":
            writer.write(name, torch.zeros(tensor.spec.shape, dtype=self.dtype))
        elif tensor.kind == "router":
            writer.write(name, self.gates[tensor.layer, :n].to(self.dtype).contiguous())
        elif tensor.kind == "shared_gate":
            writer.write(name, self.gates[tensor.layer, n : n + 1].to(self.dtype).contiguous())
        else:
            for block in tensor.blocks:
                out = self._expert_block(block)
                if block.row is None:
                    writer.write(name, out)
                else:
                    writer.write(name, out.unsqueeze(0), row_start=block.row)
            if any(self._float32_math(b) for b in tensor.blocks):
                # glibc keeps the freed float32 buffers (1-32 MB) in its heaps; without this the
                # resident memory of a noisy build grows with the expert count.
                release_free_memory()

    def _float32_math(self, block: Block) -> bool:
        expert = self.plan.experts[block.expert]
        return bool(expert.noise_scale) or expert.residual_scale is not None

    def _expert_block(self, block: Block) -> torch.Tensor:
        """One expert's projection(s), noise and residual scale applied, concatenated on dim 0."""
        expert = self.plan.experts[block.expert]
        reads = [self.reader.read(s.model, s.name) for s in block.parts]
        if not self._float32_math(block):
            # Copied as they are: no float32 round trip (a same-dtype cast is free).
            raw = reads[0] if len(reads) == 1 else torch.cat(reads, dim=0)  # (rows, cols)
            return raw.to(self.dtype).contiguous()
        rows = sum(r.shape[0] for r in reads)
        out = torch.empty((rows, *reads[0].shape[1:]), dtype=self.dtype)  # (rows, cols)
        start = 0
        for raw, projection in zip(reads, block.projections, strict=True):
            # In place, one projection at a time: one float32 copy and its noise alive at once.
            w = raw.to(self.device, torch.float32, copy=True)
            if expert.noise_scale:
                noise = expert_noise(
                    tuple(w.shape), self.seed, block.expert, block.layer, projection
                )
                w.add_(noise.to(self.device), alpha=expert.noise_scale)
                del noise
            if expert.residual_scale is not None and projection == "down_proj":
                w.mul_(expert.residual_scale)
            out[start : start + w.shape[0]] = w.to("cpu")
            start += w.shape[0]
            del w
        return out


def _write_metadata(plan: MoePlan, folder: Path, options: BuildOptions) -> None:
    from meldkit.moe.card import write_moe_card, write_moe_recipe
    from meldkit.tokenizer.files import copy_tokenizer_files

    base = plan.models[plan.base].folder
    text = json.dumps(plan.out_config, indent=2, sort_keys=True) + "\n"
    (folder / "config.json").write_text(text, encoding="utf-8")
    if (base / "generation_config.json").is_file():
        shutil.copyfile(base / "generation_config.json", folder / "generation_config.json")
    if options.copy_tokenizer:
        copy_tokenizer_files(base, folder)  # unchanged: MergeKit sets pad = BOS, left padding
    if options.write_model_card:
        write_moe_card(plan, folder)
        write_moe_recipe(plan, folder)


def _start_journal(
    plan: MoePlan, tmp: Path, fingerprint: str, resume: bool, warn: Callable[[str], None]
) -> tuple[Journal, list[str]]:
    journal = Journal(tmp, fingerprint)
    completed: list[str] = []
    previous = Journal.read(tmp) if resume else None
    if previous is not None and previous["fingerprint"] == fingerprint:
        sizes = {s.filename: s.file_size for s in plan.shards}
        completed = journal.adopt(
            previous, sizes, lambda name, why: warn(f"--resume: writing {name} again: {why}")
        )
    elif previous is not None:
        warn(
            "--resume: the interrupted build used another recipe, inputs or options; starting afresh"
        )
    journal.prune(keep=completed)
    journal.save()
    return journal, completed


def build_moe(
    plan: MoePlan,
    out: str | Path,
    options: BuildOptions | None = None,
    on_warning: Callable[[str], None] | None = None,
    on_info: Callable[[str], None] | None = None,
) -> Path:
    """Build ``plan`` into the model folder ``out`` (atomically); returns ``out``."""
    options = options or BuildOptions()
    out, warn, info = Path(out), on_warning or _ignore, on_info or _ignore
    inputs = [m.folder for m in plan.models.values()]
    inputs += [m.lora_folder for m in plan.models.values() if m.lora_folder]
    check_output_folder(out, inputs, options.overwrite)
    device = resolve_device(options.device)
    seed = 0 if options.seed is None else options.seed
    with SourceReader(plan.models) as reader:
        gates = gate_vectors(
            plan, reader, seed, device, options.layer_by_layer
        )  # (layers, experts, hidden)
        bad = degenerate_warning(degenerate_layers(gates, plan.n_routed), plan.num_layers)
        if bad:
            warn(bad)
        fingerprint = _fingerprint(plan, device, seed)
        partial = prepare_partial(out, options.resume, overwrite=options.overwrite)
        journal: Journal | None = None
        try:
            journal, completed = _start_journal(
                plan, partial.path, fingerprint, options.resume, warn
            )
            if completed:
                info(f"resuming: {len(completed)} of {len(plan.shards)} shard(s) already written")
            remaining = sum(s.file_size for s in plan.shards if s.filename not in completed)
            check_free_space(out, remaining)
            maker = _TensorMaker(plan, reader, gates, seed, device)
            _write_tensors(plan, partial.path, journal, completed, maker, options.quiet)
            _write_metadata(plan, partial.path, options)
            journal.discard()
            publish(partial.path, out, options.overwrite)
        except BaseException as exc:
            if options.resume and journal is not None:
                journal.prune(keep=journal.completed())  # the next --resume continues from these
            else:
                shutil.rmtree(partial.path, ignore_errors=True)
            error = _as_error(exc)
            if error is exc:
                raise
            raise error from None
        finally:
            partial.release()
    return out


def _as_error(exc: BaseException) -> BaseException:
    if isinstance(exc, OSError):
        if is_disk_full(exc):
            return disk_full(exc.filename or "the output")
        return MergeRuntimeError(
            f"file error while building: {exc.filename}: {exc.strerror or exc}"
        )
    return exc


def _write_tensors(
    plan: MoePlan,
    tmp: Path,
    journal: Journal,
    completed: list[str],
    maker: _TensorMaker,
    quiet: bool,
) -> None:
    skip = {e.spec.name for s in plan.shards if s.filename in completed for e in s.entries}
    todo = [t for t in plan.tensors if t.name not in skip]
    bar: Any = None
    if not quiet and sys.stderr is not None and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="tensor", desc="building MoE", leave=False)
    try:
        with ShardedWriter(
            tmp, plan.shards, on_shard_complete=journal.record, completed=completed
        ) as writer:
            for tensor in todo:
                maker.write(tensor, writer)
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()


def partial_path(out: str | Path) -> Path:
    """Where an interrupted build of ``out`` keeps its shards (for --resume)."""
    return partial_folder(Path(out))
