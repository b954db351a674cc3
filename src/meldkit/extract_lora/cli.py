"""``meldkit extract-lora``: the subcommand's options (MergeKit's spellings as aliases) and body.

No torch at import time: ``meldkit --help`` imports this module.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from meldkit.cli import options as common

__all__ = ["add_parser", "cmd_extract_lora"]

_DESCRIPTION = (
    "Extract the difference between a fine-tune and its base as a PEFT LoRA adapter: each "
    "linear layer as a truncated SVD of its delta (rank fixed, or chosen per module by "
    "--energy / --max-error), norms, biases and embeddings at full rank (modules_to_save). "
    "Prints and saves (extraction_report.json) each module's rank, energy kept and relative "
    "error. B and M are folders, hub ids or model+lora references."
)


def _add_rank(g: Any) -> None:
    g.add_argument(
        "--rank",
        "--max-rank",
        dest="rank",
        type=int,
        default=None,
        help="LoRA rank (default 128); with --energy or --max-error, the largest rank allowed",
    )
    g.add_argument(
        "--energy",
        type=float,
        default=None,
        help="choose each module's rank as the smallest keeping this fraction of "
        "||delta||_F^2 (e.g. 0.9)",
    )
    g.add_argument(
        "--max-error",
        type=float,
        default=None,
        help="choose each module's rank as the smallest with ||delta - BA||_F / ||delta||_F "
        "at most this (e.g. 0.1)",
    )
    g.add_argument(
        "--sv-epsilon",
        type=float,
        default=0.0,
        help="also drop singular values at or below this (absolute; MergeKit's option)",
    )
    g.add_argument(
        "--distribute-scale",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="A = sqrt(S) V^T, B = U sqrt(S) (default); off: A = S V^T, B = U",
    )
    g.add_argument(
        "--svd",
        choices=["auto", "full", "randomized"],
        default="auto",
        help="auto (default): randomized SVD when the rank is far below the matrix size, "
        "checked against the full SVD's accuracy at a fixed rank (else full); full; "
        "randomized: unchecked, faster on flat spectra (the error reported stays exact)",
    )


def _add_modules(g: Any) -> None:
    g.add_argument(
        "--include",
        "--include-regex",
        "-i",
        dest="include",
        action="append",
        default=[],
        metavar="REGEX",
        help="only modules whose name matches (repeatable; Python re.search)",
    )
    g.add_argument(
        "--exclude",
        "--exclude-regex",
        "-e",
        dest="exclude",
        action="append",
        default=[],
        metavar="REGEX",
        help="leave out modules whose name matches (repeatable); they keep the base's values",
    )
    g.add_argument(
        "--save-module",
        dest="save_modules",
        action="append",
        default=[],
        metavar="NAME",
        help="save this module at full rank (full name or last component; repeatable)",
    )
    g.add_argument(
        "--embed-lora",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="decompose embeddings and the output head too (default: saved at full rank)",
    )
    g.add_argument(
        "--skip-undecomposable",
        action="store_true",
        help="leave out norms and other modules that cannot be decomposed",
    )


def add_parser(sub: Any) -> None:
    """Add ``extract-lora`` to the ``meldkit`` subcommands."""
    p = sub.add_parser(
        "extract-lora", help="extract a LoRA adapter from a fine-tune", description=_DESCRIPTION
    )
    p.add_argument("out", nargs="?", help="output adapter folder")
    p.add_argument("--base", "--base-model", dest="base", required=True, help="base model (B)")
    p.add_argument("--model", dest="model", required=True, help="fine-tuned model (M)")
    p.add_argument("--out-path", dest="out_path", help="output folder (MergeKit's spelling)")
    _add_rank(p.add_argument_group("rank"))
    _add_modules(p.add_argument_group("modules"))
    run = p.add_argument_group("run")
    run.add_argument("--device", default="cpu", help="math device: cpu (default), cuda[:N], auto")
    run.add_argument("--cuda", action="store_true", help="same as --device cuda")
    run.add_argument("--seed", "--random-seed", dest="seed", type=int, default=0, help="seed")
    run.add_argument("--overwrite", action="store_true", help="replace an existing output")
    run.add_argument(
        "--cache-dir", "--transformers-cache", dest="cache_dir", help="hub download cache"
    )
    run.add_argument("--quiet", action="store_true", help="print the summary only")
    common.add_verbose(run)
    common.add_compat(p)  # MergeKit's shared merge options, accepted with no effect
    common.add_debug(p)
    p.set_defaults(func=cmd_extract_lora)


def _command(args: argparse.Namespace, out: str) -> str:
    """The command line, for the card, rebuilt from the options that change the adapter."""
    words = ["meldkit", "extract-lora", "--base", args.base, "--model", args.model, out]
    for flag, value in (
        ("--rank", args.rank),
        ("--energy", args.energy),
        ("--max-error", args.max_error),
        ("--sv-epsilon", args.sv_epsilon or None),
        ("--seed", args.seed or None),
        ("--svd", None if args.svd == "auto" else args.svd),
    ):
        if value is not None:
            words += [flag, str(value)]
    for flag, values in (
        ("--include", args.include),
        ("--exclude", args.exclude),
        ("--save-module", args.save_modules),
    ):
        for value in values:
            words += [flag, value]
    for flag, on in (
        ("--embed-lora", args.embed_lora),
        ("--skip-undecomposable", args.skip_undecomposable),
        ("--no-distribute-scale", not args.distribute_scale),
    ):
        if on:
            words.append(flag)
    return " ".join(shlex.quote(w) for w in words)


def cmd_extract_lora(args: argparse.Namespace) -> int:
    """Plan, extract, print the per-module table; returns the exit code."""
    from meldkit.errors import MeldError
    from meldkit.extract_lora import ExtractionOptions, plan_extraction

    out = args.out or args.out_path
    if not out or (args.out and args.out_path and args.out != args.out_path):
        raise MeldError(
            "give the output folder once: OUT or --out-path",
            hint="meldkit extract-lora --base B --model M OUT",
        )
    opts = ExtractionOptions(
        rank=args.rank,
        energy=args.energy,
        max_error=args.max_error,
        sv_epsilon=args.sv_epsilon,
        include=tuple(args.include),
        exclude=tuple(args.exclude),
        save_modules=tuple(args.save_modules),
        embed_lora=args.embed_lora,
        skip_undecomposable=args.skip_undecomposable,
        distribute_scale=args.distribute_scale,
        device="cuda" if args.cuda else args.device,
        seed=args.seed,
        svd=args.svd,
    )
    plan = plan_extraction(
        args.base, args.model, out, opts, cache_dir=args.cache_dir, overwrite=args.overwrite
    )
    for warning in plan.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    from meldkit.extract_lora.extract import run_extraction
    from meldkit.extract_lora.report import ModuleResult, format_table

    command = _command(args, out)
    total = len(plan.modules)
    done = [0]

    def progress(result: ModuleResult) -> None:
        done[0] += 1
        rank = "full" if result.rank is None else f"rank {result.rank}"
        print(
            f"[{done[0]}/{total}] {result.module}: {result.handling}, {rank}, "
            f"error {result.error:.3e}",
            file=sys.stderr,
        )

    report = run_extraction(
        plan,
        overwrite=args.overwrite,
        command=command,
        on_module=progress if args.verbose else None,
    )
    table = format_table(report)
    print(table.splitlines()[-1] if args.quiet else table)
    print(f"wrote {plan.out}")
    return 0
