"""The ``meldkit`` command: parses arguments, calls the library, prints results and errors.

Nothing else in meldkit prints or exits. Errors are printed as ``error: ...`` and ``hint: ...``
(two lines at most: a plan with several problems shows the first and how many more, ``-v``
lists them all) and exit with the error's code (2 for problems found before computing, 1 while
merging, 130/143 when interrupted by SIGINT/SIGTERM). Anything else that escapes is a bug:
one ``error: internal error: ...`` line, exit 1. ``--debug`` shows the traceback, and lets
library warnings through (they are hidden otherwise: they are meant for developers). Heavy
modules (torch) are imported only by the subcommands that compute, so ``--help`` and ``plan``
stay fast.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

from meldkit import __version__
from meldkit.cli import commands, process

__all__ = ["main", "run", "build_parser"]

_COMPAT_NOTE = (
    "accepted for MergeKit compatibility; no effect (meldkit already does the right thing)"
)


def _add_merge_options(p: argparse.ArgumentParser) -> None:
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
    g.add_argument("-v", "--verbose", action="count", default=0, help="more messages")
    o = p.add_argument_group("output")
    o.add_argument(
        "--out-shard-size",
        default="5GB",
        help="largest output shard, in bytes with units: 5GB, 500MB, 2GiB (MergeKit's 5B = 5e9 also works)",
    )
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
    o.add_argument("--no-write-model-card", dest="write_model_card", action="store_false")
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
    c = p.add_argument_group("checks")
    c.add_argument("--strict", action="store_true", help="treat every recipe warning as an error")
    c.add_argument(
        "--unsafe-truncate-embeddings",
        action="store_true",
        help="truncate vocabulary tensors of different sizes to the smallest (MergeKit opt-in)",
    )
    c.add_argument(
        "--transformers-cache",
        "--cache-dir",
        dest="cache_dir",
        default=None,
        help="Hugging Face cache folder for hub model ids",
    )
    c.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow remote code when a tokenizer needs it (off by default; never needed for weights)",
    )
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
        compat.add_argument(flag, action="store_true", help=_COMPAT_NOTE)
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
    compat.add_argument("--lora-merge-dtype", default=None, help=_COMPAT_NOTE)
    compat.add_argument("--write-threads", type=int, default=None, help=_COMPAT_NOTE)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meldkit",
        description="Merge LLM checkpoints from MergeKit YAML recipes, streaming and memory-bounded.",
    )
    parser.add_argument("--version", action="version", version=f"meldkit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    merge = sub.add_parser(
        "merge",
        help="run a recipe and write a model folder",
        description="Run a MergeKit YAML recipe and write a Hugging Face model folder.",
    )
    merge.add_argument("recipe", help="recipe YAML file")
    merge.add_argument("out", help="output folder")
    merge.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    _add_merge_options(merge)
    merge.set_defaults(func=commands.cmd_merge)

    plan = sub.add_parser(
        "plan",
        help="check a recipe and show what a merge would do",
        description="Validate a recipe against its inputs (headers only) and print the plan.",
    )
    plan.add_argument("recipe")
    plan.add_argument("--out-shard-size", default="5GB")
    plan.add_argument("--strict", action="store_true")
    plan.add_argument("--unsafe-truncate-embeddings", action="store_true")
    plan.add_argument("--cache-dir", "--transformers-cache", dest="cache_dir", default=None)
    plan.add_argument("--tensors", action="store_true", help="list every output tensor")
    plan.add_argument("-v", "--verbose", action="count", default=0, help="list every problem found")
    plan.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
    plan.set_defaults(func=commands.cmd_plan)

    methods = sub.add_parser("methods", help="list the merge methods and their parameters")
    methods.add_argument("--json", action="store_true", help="machine-readable output")
    methods.set_defaults(func=commands.cmd_methods)

    demo = sub.add_parser("demo", help="make tiny models and merge them (no downloads)")
    demo.add_argument(
        "out", nargs="?", default="demo-out", help="folder for the demo (default: demo-out)"
    )
    demo.add_argument("--overwrite", action="store_true", default=True, help=argparse.SUPPRESS)
    demo.set_defaults(func=commands.cmd_demo)

    verify = sub.add_parser(
        "verify",
        help="check a merged model folder",
        description="Check a model folder: the index covers every shard and tensor exactly once, every "
        "tensor reads back without NaN or Inf, config.json agrees with the weights, the tokenizer "
        "loads. Exits 1 with one line per problem.",
    )
    verify.add_argument("folder")
    verify.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
    verify.set_defaults(func=commands.cmd_verify)
    return parser


class _Terminated(KeyboardInterrupt):
    """SIGTERM outside a merge's own handling: stop like Ctrl-C, exit 143."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated()


@contextmanager
def _sigterm_stops() -> Iterator[None]:
    """Turn SIGTERM into an exception for the command's duration, so cleanup code runs.

    (A merge installs its own handler while it writes; see meldkit.execute.runner.)
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _print_error(exc: Any, verbose: int) -> None:
    """``error: <message>`` and ``hint: <hint>``; several plan problems are folded into one line."""
    message, hint = exc.message, exc.hint
    problems = getattr(exc, "problems", None)
    if isinstance(problems, list) and len(problems) > 1 and not verbose:
        more = len(problems) - 1
        message = f"{problems[0]} (and {more} more problem{'s' if more > 1 else ''})"
        extra = f"add -v to list all {len(problems)} problems"
        hint = f"{hint}; {extra}" if hint else extra
    print(f"error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from meldkit.errors import MeldError

    debug = bool(getattr(args, "debug", False))
    verbose = int(getattr(args, "verbose", 0) or 0)
    try:
        with _sigterm_stops(), warnings.catch_warnings():
            if not debug:
                # Library warnings (torch's pickle-protocol notes, transformers' deprecations)
                # are for developers; meldkit reports what matters to users as "warning:" lines.
                warnings.simplefilter("ignore")
            return int(args.func(args) or 0)
    except MeldError as exc:
        if debug:
            raise
        _print_error(exc, verbose)
        return exc.exit_code
    except _Terminated:
        print("error: interrupted by SIGTERM", file=sys.stderr)
        return 128 + int(signal.SIGTERM)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 128 + int(signal.SIGINT)
    except BrokenPipeError:
        # `meldkit methods | head`: the reader went away; not an error worth a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except MemoryError:
        if debug:
            raise
        print("error: out of memory", file=sys.stderr)
        print(
            "hint: close other programs, or use a machine with more memory "
            "(`meldkit plan` shows the estimated peak)",
            file=sys.stderr,
        )
        return 1
    except Exception as exc:
        if debug:
            raise
        print(f"error: internal error: {_first_line(exc)}", file=sys.stderr)
        print(
            "hint: this is a bug in meldkit; run again with --debug to see the traceback, "
            "and please report it",
            file=sys.stderr,
        )
        return 1


def run() -> NoReturn:
    """The ``meldkit`` console command (and ``python -m meldkit``): :func:`main` inside the
    process-level settings of :mod:`meldkit.cli.process`, then exit without the interpreter's
    teardown. Library callers and tests call :func:`main`."""
    process.prepare()
    process.finish(main())
