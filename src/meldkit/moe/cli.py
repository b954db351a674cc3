"""``meldkit moe RECIPE OUT``: the subcommand (argparse; torch is imported only to build).

It takes ``mergekit-moe``'s flags: the merge options meldkit shares with ``meldkit merge``,
``--i-understand-this-is-not-useful-without-training`` (allows every expert to be the same
model) and ``--load-in-4bit`` / ``--load-in-8bit`` (accepted and ignored, with a warning).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from meldkit.cli import options

__all__ = ["add_parser", "cmd_moe", "moe_options"]

IDENTICAL_FLAG = "--i-understand-this-is-not-useful-without-training"


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


def add_moe_plan_options(p: Any) -> None:
    """The options that change the plan (shared by ``meldkit moe`` and ``meldkit plan``)."""
    p.add_argument(
        "--expert-layout",
        choices=("auto", "fused", "per-expert"),
        default="auto",
        help="auto (default): as MergeKit 0.1.5 writes each output (Mixtral and Qwen3-MoE "
        "fused, Qwen2-MoE and DeepSeek-MoE per-expert); fused: mlp.experts.gate_up_proj/"
        "down_proj, what transformers 5 holds; per-expert: one tensor per expert "
        "(block_sparse_moe.experts.N.w1/w2/w3 for Mixtral), for transformers 4, llama.cpp's "
        "converter and other older loaders",
    )
    p.add_argument(
        IDENTICAL_FLAG,
        dest="allow_identical_experts",
        action="store_true",
        help="allow every expert to be the same model (MergeKit's opt-in)",
    )


def add_parser(sub: Any) -> None:
    """Add ``meldkit moe`` to the ``meldkit`` subparsers."""
    moe = sub.add_parser(
        "moe",
        help="build a mixture of experts from dense models (mergekit-moe recipes)",
        description="Build a mixture-of-experts model (Mixtral, Qwen2-MoE, Qwen3-MoE, "
        "DeepSeek-MoE) from a base model and dense expert models, with routers from the "
        "experts' prompts (gate_mode hidden, hidden_avg, cheap_embed) or random ones. The "
        "recipe is MergeKit's mergekit-moe YAML, unchanged.",
    )
    moe.add_argument("recipe", help="MoE recipe YAML file")
    moe.add_argument("out", help="output folder")
    options.add_debug(moe)
    options.add_execution(moe)
    options.add_output(moe)
    built = moe.add_argument_group("MoE")
    add_moe_plan_options(built)
    built.add_argument(
        "--layer-by-layer",
        action="store_true",
        help="hidden-state routers: run the base one decoder layer at a time from its "
        "safetensors files (for bases larger than memory)",
    )
    for flag in ("--load-in-4bit", "--load-in-8bit"):
        built.add_argument(flag, action="store_true", help="accepted for MergeKit; ignored")
    checks = moe.add_argument_group("checks")
    options.add_checks(checks)
    checks.add_argument(
        "--trust-remote-code", action="store_true", help=options.COMPAT_NOTE + " (never used)"
    )
    options.add_compat(moe)
    moe.set_defaults(func=cmd_moe)


def moe_options(args: argparse.Namespace) -> Any:
    """The :class:`~meldkit.moe.plan.MoeOptions` of parsed arguments."""
    from meldkit.io.sizes import parse_size
    from meldkit.moe.plan import MoeOptions

    return MoeOptions(
        out_shard_size=parse_size(args.out_shard_size),
        cache_dir=args.cache_dir,
        expert_layout=args.expert_layout,
        allow_identical_experts=args.allow_identical_experts,
    )


def _plan_warnings(plan: Any, strict: bool) -> None:
    from meldkit.errors import PlanError

    if strict and plan.warnings:
        raise PlanError(list(plan.warnings), hint="--strict turns warnings into errors")
    for w in plan.warnings:
        _warn(w)


def cmd_moe(args: argparse.Namespace) -> int:
    """``meldkit moe``: plan (headers only), then build the model folder."""
    from meldkit.moe.plan import plan_moe

    for flag in ("load_in_4bit", "load_in_8bit"):
        if getattr(args, flag):
            _warn(f"--{flag.replace('_', '-')} is ignored: the router runs the base unquantised")
    plan = plan_moe(args.recipe, moe_options(args))
    _plan_warnings(plan, args.strict)
    from meldkit.cli import process

    with process.engine_import():  # after planning: a recipe that fails never imports torch
        from meldkit.moe.build import BuildOptions, build_moe
    device = options.chosen_device(args)
    build = BuildOptions(
        device=device,
        seed=args.seed,
        quiet=args.quiet,
        copy_tokenizer=args.copy_tokenizer,
        write_model_card=args.write_model_card,
        overwrite=args.overwrite,
        resume=args.resume,
        layer_by_layer=args.layer_by_layer,
    )
    out = build_moe(plan, args.out, build, _warn, None if args.quiet else _note)
    if not args.quiet:
        print(
            f"wrote {plan.arch.title} with {plan.n_routed} experts: {len(plan.tensors)} tensors "
            f"in {len(plan.shards)} shard(s) to {out}"
        )
    return 0


def cmd_plan_moe(args: argparse.Namespace) -> int:
    """``meldkit plan`` for a MoE recipe: the summary (``--tensors``), or ``--json``."""
    import json

    from meldkit.io.sizes import parse_size
    from meldkit.moe.plan import MoeOptions, plan_moe
    from meldkit.moe.summary import describe_moe_plan, moe_plan_json

    plan = plan_moe(
        args.recipe,
        MoeOptions(out_shard_size=parse_size(args.out_shard_size), cache_dir=args.cache_dir),
    )
    _plan_warnings(plan, args.strict)
    if args.json:
        print(json.dumps(moe_plan_json(plan), indent=2))  # stdout holds the JSON alone
        return 0
    print(describe_moe_plan(plan, args.tensors))
    print("plan OK: nothing was computed")
    return 0
