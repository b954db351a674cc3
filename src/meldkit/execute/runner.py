"""Executing a plan: the only place where io and methods meet.

Three stages overlap: a loader thread reads the inputs of the next tensors (``prefetch`` ahead),
the calling thread runs the method, and a writer thread puts finished tensors in place in their
shard. At most ``prefetch + 2`` tensors' data is alive at any time, whatever the model size.
Everything is written into a temporary folder that is renamed into place at the very end.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from meldkit.errors import MergeRuntimeError
from meldkit.execute.device import resolve_device
from meldkit.execute.output import check_output_folder, partial_folder, prepare_partial, publish
from meldkit.execute.tensors import TensorLoader, compute_tensor
from meldkit.io.writer import ShardedWriter
from meldkit.methods.registry import MergeContext, load_merge_function
from meldkit.plan.planner import MergePlan, TensorPlan

__all__ = ["RunOptions", "execute_plan", "partial_path"]


@dataclass(frozen=True)
class RunOptions:
    """How to execute a plan (the plan itself fixes what is computed)."""

    device: str = "cpu"
    threads: int | None = None
    seed: int | None = None
    quiet: bool = False
    copy_tokenizer: bool = True
    write_model_card: bool = True
    overwrite: bool = False
    resume: bool = False
    prefetch: int = 2


class _Interrupted(BaseException):
    """Raised in the main thread by SIGTERM so cleanup runs as for Ctrl-C."""


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise _Interrupted()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _progress(plan: MergePlan, quiet: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=len(plan.tensors),
        unit="tensor",
        desc="merging",
        disable=quiet or not sys.stderr.isatty(),
        leave=False,
    )


def execute_plan(plan: MergePlan, out: str | Path, options: RunOptions | None = None,
                 on_warning: Callable[[str], None] | None = None) -> Path:
    """Run ``plan`` and write a complete Hugging Face model folder at ``out``."""
    options = options or RunOptions()
    out = Path(out)
    inputs = [m.folder for m in plan.models.values()] + [m.lora_folder for m in plan.models.values() if m.lora_folder]
    check_output_folder(out, inputs, options.overwrite)
    device = resolve_device(options.device)
    if options.threads:
        torch.set_num_threads(options.threads)
    tmp = prepare_partial(out, options.resume)
    warn = on_warning or (lambda message: None)
    try:
        with _sigterm_as_interrupt():
            _write_tensors(plan, tmp, device, options, warn)
            _write_metadata(plan, tmp, options, warn)
            publish(tmp, out)
    except (KeyboardInterrupt, _Interrupted):
        if not options.resume:
            shutil.rmtree(tmp, ignore_errors=True)
        raise MergeRuntimeError(
            "interrupted; nothing was written to " + str(out),
            hint="run again (add --resume to continue from the shards already written)"
            if options.resume else "run the same command again",
        ) from None
    except BaseException:
        if not options.resume:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_tensors(plan: MergePlan, tmp: Path, device: str, options: RunOptions, warn: Callable[[str], None]) -> None:
    fn = load_merge_function(plan.method)
    loader = TensorLoader(plan, device, warn)
    with ShardedWriter(tmp, plan.shards) as writer, \
            ThreadPoolExecutor(1, thread_name_prefix="meldkit-read") as reads, \
            ThreadPoolExecutor(1, thread_name_prefix="meldkit-write") as writes, \
            _progress(plan, options.quiet) as bar:
        window: deque[tuple[TensorPlan, Future[list[torch.Tensor]]]] = deque()
        in_flight: deque[Future[None]] = deque()
        upcoming = iter(plan.tensors)

        def refill() -> None:
            while len(window) <= options.prefetch:
                nxt = next(upcoming, None)
                if nxt is None:
                    return
                window.append((nxt, reads.submit(loader.load, nxt)))

        try:
            refill()
            while window:
                tensor, future = window.popleft()
                raw = future.result()
                refill()
                ctx = MergeContext(tensor.name, options.seed, device)
                result = compute_tensor(tensor, raw, fn, ctx, device)
                del raw
                in_flight.append(writes.submit(writer.write, tensor.name, result))
                del result
                while len(in_flight) > 1 or (in_flight and in_flight[0].done()):
                    in_flight.popleft().result()
                bar.update(1)
            while in_flight:
                in_flight.popleft().result()
        except BaseException:
            for _, f in window:
                f.cancel()
            raise
        finally:
            loader.close()
        writer.finish()


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_metadata(plan: MergePlan, tmp: Path, options: RunOptions, warn: Callable[[str], None]) -> None:
    from meldkit.card import write_card, write_recipe
    from meldkit.execute.tokenizer_step import write_tokenizer

    donor = plan.models[plan.donor]
    if plan.out_config is not None:
        _write_json(tmp / "config.json", plan.out_config)
    gen = donor.folder / "generation_config.json"
    if gen.is_file():
        shutil.copyfile(gen, tmp / "generation_config.json")
    if options.copy_tokenizer:
        write_tokenizer(plan, tmp, warn)
    elif plan.config.chat_template:
        warn("chat_template is dropped because --no-copy-tokenizer was given")
    if options.write_model_card:
        write_card(plan, tmp)
        write_recipe(plan, tmp)


def partial_path(out: str | Path) -> Path:
    """Where an interrupted run of ``out`` keeps its files (for --resume)."""
    return partial_folder(Path(out))

