"""``meldkit merge-raw RECIPE OUT``: a recipe over raw checkpoint files, merged into one
safetensors file (MergeKit's ``mergekit-pytorch``).

Imports nothing heavy: ``meldkit --help`` imports this module; torch is imported when the
command runs, after planning.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from meldkit.cli import options

__all__ = ["add_parser", "cmd_merge_raw"]

_DESCRIPTION = (
    "Merge raw checkpoints: a MergeKit recipe whose models are single .safetensors files or "
    ".pt/.bin state dicts (read with torch.load(weights_only=True)), with no config.json. "
    "Writes one safetensors file: OUT itself when it ends in .safetensors, else "
    "OUT/model.safetensors. Inputs that do not share every tensor name are an error (each "
    "missing tensor is listed) unless --tensor-intersection or --tensor-union says otherwise."
)


def add_parser(sub: Any) -> None:
    """Add ``merge-raw`` to the ``meldkit`` subcommands."""
    p = sub.add_parser(
        "merge-raw",
        help="merge raw .safetensors/.pt state dicts into one safetensors file",
        description=_DESCRIPTION,
    )
    p.add_argument("recipe", help="recipe YAML file (models: raw checkpoint files)")
    p.add_argument("out", help="output .safetensors file, or a folder for model.safetensors")
    options.add_debug(p)
    names = p.add_argument_group("tensors the inputs do not share")
    choice = names.add_mutually_exclusive_group()
    choice.add_argument(
        "--tensor-intersection",
        "-i",
        dest="missing",
        action="store_const",
        const="intersection",
        help="merge only the tensors every input has",
    )
    choice.add_argument(
        "--tensor-union",
        "-u",
        dest="missing",
        action="store_const",
        const="union",
        help="merge every tensor from the inputs that have it (one that a single input has is "
        "copied as it is)",
    )
    p.set_defaults(missing="error")
    options.add_execution(p)
    out = p.add_argument_group("output")
    out.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output file (only once the new one is complete; never an input)",
    )
    out.add_argument("--strict", action="store_true", help="treat every recipe warning as an error")
    out.add_argument(
        "--dry-run",
        action="store_true",
        help="check the recipe against the inputs' headers and show the plan; nothing is "
        "computed or written",
    )
    _add_ignored(p)
    p.set_defaults(func=cmd_merge_raw)


def _add_ignored(p: argparse.ArgumentParser) -> None:
    """MergeKit's merge options that mean nothing for one raw file: accepted, no effect."""
    options.add_compat(p)
    g = p.add_argument_group("accepted for MergeKit compatibility (no effect on a raw merge)")
    g.add_argument("--out-shard-size", default=None, help="ignored: merge-raw writes one file")
    for flag in ("--copy-tokenizer", "--no-copy-tokenizer", "--write-model-card"):
        g.add_argument(flag, action="store_true", help="ignored: raw checkpoints have none")
    g.add_argument("--no-write-model-card", action="store_true", help="ignored: none is written")
    g.add_argument("--trust-remote-code", action="store_true", help="ignored: no code is run")
    g.add_argument(
        "--transformers-cache", "--cache-dir", dest="cache_dir", default=None, help="ignored"
    )


def cmd_merge_raw(args: argparse.Namespace) -> int:
    """Plan the raw merge (every problem at once), then run it on the engine."""
    from meldkit.raw.run import merge_raw, plan_raw_recipe

    def warn(message: str) -> None:
        print(f"warning: {message}", file=sys.stderr)

    def note(message: str) -> None:
        print(f"note: {message}", file=sys.stderr)

    if args.dry_run:
        from meldkit.plan.summary import describe_plan

        plan = plan_raw_recipe(
            args.recipe, missing=args.missing, strict=args.strict, on_warning=warn
        )
        for message in plan.warnings:
            warn(message)
        print(describe_plan(plan, False))
        print("plan OK: nothing was computed")
        return 0
    device = options.chosen_device(args)
    target = merge_raw(
        args.recipe,
        args.out,
        missing=args.missing,
        strict=args.strict,
        overwrite=args.overwrite,
        on_warning=warn,
        on_info=None if args.quiet else note,
        device=device,
        threads=args.threads,
        seed=args.seed,
        quiet=args.quiet,
        verbose=args.verbose,
    )
    if not args.quiet:
        print(f"wrote {target}")
    return 0
