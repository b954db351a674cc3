"""``meldkit multi``: run a multi-stage (mergekit-multi) recipe. Torch-free at import."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from meldkit.cli import options

__all__ = ["add_parser", "cmd_multi"]


def add_parser(sub: Any) -> None:
    """Add the ``multi`` subcommand to the ``meldkit`` subparsers ``sub``."""
    p = sub.add_parser(
        "multi",
        help="run a multi-stage recipe (mergekit-multi): named stages feed later ones",
        description="Run a YAML file of several merge recipes. A document's `name:` makes its "
        "output a model of the later documents; the one unnamed document is the final merge, "
        "written to --out. Every stage is planned before any runs; an intermediate whose "
        "recipe and inputs are unchanged is reused from --intermediate-dir.",
    )
    p.add_argument("recipe", help="multi-stage recipe YAML file")
    p.add_argument(
        "--out", "--out-path", dest="out", required=True, help="output folder of the final stage"
    )
    p.add_argument(
        "--intermediate-dir",
        "-I",
        dest="intermediate_dir",
        required=True,
        help="folder for the named stages' outputs (DIR/<name>) and their cache records",
    )
    p.add_argument(
        "--lazy",
        dest="lazy",
        action="store_true",
        default=True,
        help="reuse an intermediate made from the same recipe and inputs (default)",
    )
    p.add_argument("--no-lazy", dest="lazy", action="store_false", help="merge every stage again")
    p.add_argument(
        "--no-intermediates",
        dest="stream",
        action="store_true",
        help="do not write the intermediates that only later stages read: merge each of their "
        "tensors as the later stage reads it (when each is read once; otherwise it is written, "
        "with a note why)",
    )
    options.add_debug(p)
    options.add_execution(p)
    options.add_output(p)
    checks = p.add_argument_group("checks")
    options.add_checks(checks)
    checks.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow remote code when a tokenizer needs it (off by default)",
    )
    options.add_compat(p)
    p.set_defaults(func=cmd_multi)


def chain_options(args: argparse.Namespace, intermediate_dir: str, out: str | None) -> Any:
    """The :class:`~meldkit.multi.ChainOptions` of the parsed arguments."""
    from meldkit.io.sizes import parse_size
    from meldkit.multi import ChainOptions
    from meldkit.plan import PlanOptions

    device = options.chosen_device(args)
    plan = PlanOptions(
        out_shard_size=parse_size(args.out_shard_size),
        unsafe_truncate_embeddings=args.unsafe_truncate_embeddings,
        strict=args.strict,
        cache_dir=args.cache_dir,
    )
    run = {
        "seed": getattr(args, "seed", None),
        "device": device.split(":")[0],
        "copy_tokenizer": getattr(args, "copy_tokenizer", True),
        "write_model_card": getattr(args, "write_model_card", True),
    }
    return ChainOptions(
        Path(intermediate_dir),
        Path(out) if out is not None else None,
        plan,
        lazy=getattr(args, "lazy", True),
        stream=getattr(args, "stream", False),
        run=run,
    )


def _say(kind: str) -> Any:
    def say(message: str) -> None:
        print(f"{kind}: {message}", file=sys.stderr)

    return say


def cmd_multi(args: argparse.Namespace) -> int:
    """Plan every stage, then run them in order; print what was merged, reused or streamed."""
    from meldkit.cli import process

    if args.no_safe_serialization:
        _say("warning")("--no-safe-serialization is ignored: meldkit always writes safetensors")
    chain = chain_options(args, args.intermediate_dir, args.out)
    with process.engine_import():
        from meldkit.multi.run import run_chain
    run = options.run_options(args)
    note = None if args.quiet else _say("note")
    result = run_chain(args.recipe, chain, run, _say("warning"), note)
    if not args.quiet:
        parts = [f"merged {len(result.executed)} stage(s)"]
        if result.cached:
            parts.append(f"reused {len(result.cached)} cached")
        if result.streamed:
            parts.append(f"streamed {len(result.streamed)} without writing them")
        print(f"{', '.join(parts)}; the final model is in {result.out}")
    return 0
