"""Option definitions the subcommands share, each written once with its help text.

``merge`` and ``plan`` both take :func:`add_shard_size` and :func:`add_checks`, so the two
spell, default and document them the same way; every subcommand takes :func:`add_debug`.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = [
    "COMPAT_NOTE",
    "DEBUG_HELP",
    "add_debug",
    "add_verbose",
    "add_shard_size",
    "add_checks",
    "add_execution",
    "add_output",
    "add_compat",
]

COMPAT_NOTE = (
    "accepted for MergeKit compatibility; no effect (meldkit already does the right thing)"
)
DEBUG_HELP = "show the traceback of an error, and library warnings (for bug reports)"


def add_debug(p: argparse.ArgumentParser) -> None:
    # SUPPRESS as the default: `meldkit --debug merge ...` must not be reset by the subcommand.
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)


def add_verbose(p: argparse.ArgumentParser | Any) -> None:
    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more messages; with an error, list every problem found, not only the first",
    )


def add_shard_size(g: Any) -> None:
    g.add_argument(
        "--out-shard-size",
        default="5GB",
        help="largest output shard, in bytes with units: 5GB (default), 500MB, 2GiB "
        "(MergeKit's 5B = 5e9 also works)",
    )


def add_checks(g: Any) -> None:
    g.add_argument("--strict", action="store_true", help="treat every recipe warning as an error")
    g.add_argument(
        "--unsafe-truncate-embeddings",
        action="store_true",
        help="truncate vocabulary tensors of different sizes to the smallest (MergeKit opt-in)",
    )
    g.add_argument(
        "--transformers-cache",
        "--cache-dir",
        dest="cache_dir",
        default=None,
        help="Hugging Face cache folder for hub model ids",
    )


def add_execution(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("execution")
    g.add_argument(
        "--device", default=None, help="math device: cpu (default), cuda, cuda:N or auto"
    )
    g.add_argument("--cuda", action="store_true", help="same as --device cuda")
    g.add_argument(
        "--gpu-rich", action="store_true", help="same as --device cuda (MergeKit spelling)"
    )
    g.add_argument(
        "--threads",
        "--num-threads",
        "-j",
        type=int,
        default=None,
        dest="threads",
        help="CPU threads for the math (default: torch's choice)",
    )
    g.add_argument(
        "--seed",
        "--random-seed",
        type=int,
        default=None,
        dest="seed",
        help="seed for random methods (DARE, DELLA); the same seed gives the same bytes",
    )
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    add_verbose(g)


def add_output(p: argparse.ArgumentParser) -> None:
    o = p.add_argument_group("output")
    add_shard_size(o)
    o.add_argument(
        "--copy-tokenizer",
        dest="copy_tokenizer",
        action="store_true",
        default=True,
        help="write the tokenizer with the model (default)",
    )
    o.add_argument(
        "--no-copy-tokenizer",
        dest="copy_tokenizer",
        action="store_false",
        help="do not write a tokenizer",
    )
    o.add_argument(
        "--write-model-card",
        dest="write_model_card",
        action="store_true",
        default=True,
        help="write README.md and mergekit_config.yml (default)",
    )
    o.add_argument(
        "--no-write-model-card",
        dest="write_model_card",
        action="store_false",
        help="write neither README.md nor mergekit_config.yml",
    )
    o.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing, non-empty output folder (only once the new model is "
        "complete; never an input folder, your home or the current folder)",
    )
    o.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted merge from the shards already written (checked "
        "against their checksums; a changed recipe, input or option starts afresh). "
        "A --resume run that is interrupted (Ctrl-C, SIGTERM, an error) keeps its "
        "finished shards for the next --resume; without --resume an interrupted run "
        "removes all its temporary files",
    )


def add_compat(p: argparse.ArgumentParser) -> None:
    compat = p.add_argument_group("MergeKit compatibility (no effect)")
    for flag in (
        "--allow-crimes",
        "--lazy-unpickle",
        "--low-cpu-memory",
        "--clone-tensors",
        "--read-to-gpu",
        "--multi-gpu",
        "--async-write",
        "--safe-serialization",
    ):
        compat.add_argument(flag, action="store_true", help=COMPAT_NOTE)
    compat.add_argument(
        "--no-safe-serialization",
        action="store_true",
        help="ignored: meldkit always writes safetensors",
    )
    compat.add_argument(
        "--lora-merge-cache",
        default=None,
        help="ignored: LoRA adapters are applied on the fly, tensor by tensor",
    )
    compat.add_argument("--lora-merge-dtype", default=None, help=COMPAT_NOTE)
    compat.add_argument("--write-threads", type=int, default=None, help=COMPAT_NOTE)


def chosen_device(args: argparse.Namespace) -> str:
    """The math device the execution options ask for: ``--device``, else ``cuda`` for
    ``--cuda``/``--gpu-rich``, else the CPU."""
    device = getattr(args, "device", None)
    if device:
        return str(device)
    return "cuda" if (getattr(args, "cuda", False) or getattr(args, "gpu_rich", False)) else "cpu"


def run_options(args: argparse.Namespace) -> Any:
    """The engine's :class:`~meldkit.execute.runner.RunOptions` from the options that
    :func:`add_execution` and :func:`add_output` define (imports the engine: call it after
    planning)."""
    from meldkit.execute.runner import RunOptions

    return RunOptions(
        device=chosen_device(args),
        threads=args.threads,
        seed=args.seed,
        quiet=args.quiet,
        copy_tokenizer=args.copy_tokenizer,
        write_model_card=args.write_model_card,
        overwrite=args.overwrite,
        resume=args.resume,
        verbose=args.verbose,
    )
