"""The subcommands' bodies; each takes the parsed arguments and returns an exit code."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from meldkit.cli import options

__all__ = [
    "cmd_merge",
    "cmd_plan",
    "cmd_methods",
    "cmd_demo",
    "cmd_make_test_models",
    "cmd_verify",
]


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


def _plan_options(args: argparse.Namespace) -> Any:
    from meldkit.io.sizes import parse_size
    from meldkit.plan import PlanOptions

    return PlanOptions(
        out_shard_size=parse_size(args.out_shard_size),
        unsafe_truncate_embeddings=args.unsafe_truncate_embeddings,
        strict=args.strict,
        cache_dir=args.cache_dir,
    )


def _is_moe_recipe(recipe: str) -> bool:
    """Whether the recipe file is a mergekit-moe recipe (planned by :mod:`meldkit.moe`)."""
    from pathlib import Path

    import yaml

    from meldkit.moe.config import is_moe_recipe

    try:
        data = yaml.safe_load(Path(recipe).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, TypeError, yaml.YAMLError):
        # (Values YAML cannot build, as `!!int x`, raise ValueError or TypeError.)
        return False  # the merge planner reports the file's problem
    return is_moe_recipe(data)


def _plan_chain(args: argparse.Namespace) -> int:
    """``meldkit plan`` on a multi-stage recipe: one plan for the whole chain."""
    import shutil
    import tempfile

    from meldkit.multi import chain_to_dict, describe_chain, plan_chain
    from meldkit.multi.cli import chain_options

    scratch = tempfile.mkdtemp(prefix="meldkit-plan-")
    try:
        chain = plan_chain(
            args.recipe, chain_options(args, f"{scratch}/stages", None), Path(scratch) / "skel"
        )
        for w in chain.warnings:
            _warn(w)
        if args.json:
            print(json.dumps(chain_to_dict(chain), indent=2))
            return 0
        print(describe_chain(chain, args.tensors, args.params, outputs=False))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("plan OK: nothing was computed (run it with `meldkit multi`)")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """``meldkit plan``: the summary (``--tensors``, ``--params``), or the plan as ``--json``.
    A multi-stage recipe is planned as one chain (:mod:`meldkit.multi`), a mergekit-moe recipe
    by :mod:`meldkit.moe`."""
    from meldkit.multi import is_multi_stage
    from meldkit.plan import plan_merge

    if is_multi_stage(args.recipe):
        return _plan_chain(args)
    if _is_moe_recipe(args.recipe):
        from meldkit.moe.cli import cmd_plan_moe

        return cmd_plan_moe(args)
    from meldkit.plan.summary import describe_parameters, describe_plan

    plan = plan_merge(args.recipe, _plan_options(args))
    for w in plan.warnings:
        _warn(w)
    if args.json:
        # stdout holds the JSON alone, so `meldkit plan r.yaml --json | jq` works.
        print(json.dumps(plan.to_dict(), indent=2))
        return 0
    print(describe_plan(plan, args.tensors))
    if args.params:
        print(describe_parameters(plan))
    print("plan OK: nothing was computed")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    """``meldkit merge``: plan, then execute the plan into the output folder."""
    from meldkit.plan import plan_merge

    if args.no_safe_serialization:
        _warn("--no-safe-serialization is ignored: meldkit always writes safetensors")
    plan = plan_merge(args.recipe, _plan_options(args))
    from meldkit.cli import process

    with process.engine_import():  # after planning: a recipe that fails never imports torch
        from meldkit.execute.runner import execute_plan
    for w in plan.warnings:
        _warn(w)
    run = options.run_options(args)
    out = execute_plan(plan, args.out, run, _warn, None if args.quiet else _note)
    if not args.quiet:
        print(f"wrote {len(plan.tensors)} tensors in {len(plan.shards)} shard(s) to {out}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    """``meldkit methods [NAME] [--json]``: every method, or one in full."""
    from meldkit.methods import describe

    if args.name is not None:
        spec = describe.find_method(args.name)
        if args.json:
            print(json.dumps(describe.method_detail_json(spec), indent=2))
        else:
            print(describe.describe_method(spec), end="")
    elif args.json:
        print(json.dumps(describe.methods_json(), indent=2))
    else:
        print(describe.methods_table())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``meldkit demo``: tiny models, a recipe and their merge in one folder."""
    from meldkit.cli.demo import run_demo

    run_demo(args.out)
    return 0


def cmd_make_test_models(args: argparse.Namespace) -> int:
    """``meldkit make-test-models DIR``: a tiny base and fine-tunes to try recipes on."""
    from meldkit.cli.tiny_models import TinyModelOptions, make_test_models

    options = TinyModelOptions(
        arch=args.arch,
        n=args.n,
        layers=args.layers,
        hidden=args.hidden,
        intermediate=args.intermediate,
        vocab=args.vocab,
        dtype=args.dtype,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    print(make_test_models(args.dir, options), end="")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """``meldkit verify``: check a model folder; exit 1 with one line per problem."""
    from meldkit.verify import verify_report

    report = verify_report(args.folder)
    for note in report.notes:
        _note(note)
    if report.problems:
        for p in report.problems:
            print(f"problem: {p}", file=sys.stderr)
        print(f"verify: {len(report.problems)} problem(s) in {args.folder}", file=sys.stderr)
        return 1
    print(
        f"verify: {args.folder} is a complete, readable model "
        f"({report.tensors} tensors in {report.files} file(s))"
    )
    return 0
