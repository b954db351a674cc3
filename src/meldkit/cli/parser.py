"""The ``meldkit`` command line: every subcommand, its options and their help.

Options that ``merge`` and ``plan`` share are defined once, in :mod:`meldkit.cli.options`,
so ``plan`` accepts them with the same spelling, default and help. Each
subcommand's parser reports an unknown option with its own usage (:class:`SubcommandParser`).
Nothing here imports torch: ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from meldkit import __version__
from meldkit.cli import commands, options
from meldkit.cli.tools import add_tool_parsers

__all__ = ["build_parser", "SubcommandParser"]


class SubcommandParser(argparse.ArgumentParser):
    """A subcommand's parser: an unknown option or extra argument is an error reported with
    this subcommand's usage (``meldkit merge r.yaml out --bogus`` shows merge's usage), where
    argparse would leave it to the top-level parser and show the top-level usage."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: Any = None
    ) -> tuple[Any, list[str]]:
        """Parse like argparse, then refuse what is left over (exits 2 with the usage)."""
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def _add_merge(sub: Any) -> None:
    merge = sub.add_parser(
        "merge",
        help="run a recipe and write a model folder",
        description="Run a MergeKit YAML recipe and write a Hugging Face model folder.",
    )
    merge.add_argument("recipe", help="recipe YAML file")
    merge.add_argument("out", help="output folder")
    options.add_debug(merge)
    options.add_execution(merge)
    options.add_output(merge)
    checks = merge.add_argument_group("checks")
    options.add_checks(checks)
    checks.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow remote code when a tokenizer needs it (off by default; never needed for weights)",
    )
    options.add_compat(merge)
    merge.set_defaults(func=commands.cmd_merge)


def _add_plan(sub: Any) -> None:
    plan = sub.add_parser(
        "plan",
        help="check a recipe and show what a merge would do",
        description="Validate a recipe against its inputs (headers only, nothing is computed) "
        "and print the plan: inputs, output tensors and shards, bytes and memory.",
    )
    plan.add_argument("recipe", help="recipe YAML file")
    shown = plan.add_argument_group("what to show")
    shown.add_argument("--tensors", action="store_true", help="list every output tensor")
    shown.add_argument(
        "--params",
        action="store_true",
        help="show the value every parameter takes (weight, density, t...) per tensor kind "
        "and layer, after gradients and filters",
    )
    shown.add_argument(
        "--json",
        action="store_true",
        help="print the whole plan as JSON on stdout (every tensor with its sources and "
        "parameters, the shards, the bytes, the warnings) instead of the summary",
    )
    options.add_verbose(shown)
    options.add_shard_size(plan.add_argument_group("output"))
    options.add_checks(plan.add_argument_group("checks"))
    options.add_debug(plan)
    plan.set_defaults(func=commands.cmd_plan)


def _add_methods(sub: Any) -> None:
    methods = sub.add_parser(
        "methods",
        help="list the merge methods, or describe one",
        description="List every merge method with its parameters, or with NAME show one in "
        "full: formula, parameters (scope, default, bounds), input rules, paper, fast path and "
        "an example recipe.",
    )
    methods.add_argument(
        "name", nargs="?", default=None, help="a method to describe in full, e.g. ties"
    )
    methods.add_argument("--json", action="store_true", help="machine-readable output")
    options.add_debug(methods)
    methods.set_defaults(func=commands.cmd_methods)


def _add_demo(sub: Any) -> None:
    demo = sub.add_parser(
        "demo",
        help="make tiny models and merge them (no downloads)",
        description="Make three tiny Llama models, write a TIES recipe for them and merge it. "
        "Everything stays in the folder (models/, recipe.yaml, merged/) to try other recipes.",
    )
    demo.add_argument(
        "out", nargs="?", default="demo-out", help="folder for the demo (default: demo-out)"
    )
    # Kept so older scripts that pass it still run; the demo always replaces its own output.
    demo.add_argument("--overwrite", action="store_true", default=True, help=argparse.SUPPRESS)
    options.add_debug(demo)
    demo.set_defaults(func=commands.cmd_demo)


def _add_make_test_models(sub: Any) -> None:
    make = sub.add_parser(
        "make-test-models",
        help="write tiny models (a base and fine-tunes) to try recipes on",
        description="Write DIR/base and DIR/ft1 ... DIR/ftN: tiny checkpoints of a real "
        "architecture (config, safetensors weights, tokenizer) with deterministic random "
        "weights, made locally (no download). Prints a recipe to try on them.",
    )
    make.add_argument("dir", metavar="DIR", help="folder to write base/ and ft1/ ... into")
    make.add_argument(
        "--arch",
        default="llama",
        help="architecture (default: llama; also mistral, qwen2, qwen3, gemma2, phi3, "
        "mixtral, gpt2, gpt_neox)",
    )
    make.add_argument("--n", type=int, default=2, help="number of fine-tunes (default: 2)")
    make.add_argument("--layers", type=int, default=4, help="layers per model (default: 4)")
    make.add_argument("--hidden", type=int, default=64, help="hidden size (default: 64)")
    make.add_argument(
        "--intermediate", type=int, default=None, help="MLP size (default: twice --hidden)"
    )
    make.add_argument("--vocab", type=int, default=128, help="vocabulary size (default: 128)")
    make.add_argument(
        "--dtype",
        default="bfloat16",
        help="weight dtype: bfloat16 (default), float16 or float32",
    )
    make.add_argument("--seed", type=int, default=0, help="seed of the weights (default: 0)")
    make.add_argument(
        "--overwrite",
        action="store_true",
        help="replace base/ and ft1/ ... if DIR already has them (never other files)",
    )
    options.add_debug(make)
    make.set_defaults(func=commands.cmd_make_test_models)


def _add_verify(sub: Any) -> None:
    verify = sub.add_parser(
        "verify",
        help="check a merged model folder",
        description="Check a model folder: the index covers every shard and tensor exactly once, every "
        "tensor reads back without NaN or Inf, config.json agrees with the weights, the tokenizer "
        "loads. Exits 1 with one line per problem.",
    )
    verify.add_argument("folder", help="model folder to check")
    options.add_debug(verify)
    verify.set_defaults(func=commands.cmd_verify)


def build_parser() -> argparse.ArgumentParser:
    """The ``meldkit`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="meldkit",
        description="Merge LLM checkpoints from MergeKit YAML recipes, streaming and memory-bounded.",
    )
    parser.add_argument("--version", action="version", version=f"meldkit {__version__}")
    parser.add_argument("--debug", action="store_true", help=options.DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=SubcommandParser)
    for add in (_add_merge, _add_plan, _add_methods, _add_demo, _add_make_test_models, _add_verify):
        add(sub)
    add_tool_parsers(sub)
    return parser
