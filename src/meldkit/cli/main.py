"""The ``meldkit`` command: parses arguments, calls the library, prints results and errors.

Nothing else in meldkit prints or exits. Errors are printed as ``error: ...`` and ``hint: ...``
(two lines at most: a plan with several problems shows the first and how many more, ``-v``
lists them all) and exit with the error's code (2 for problems found before computing, 1 while
merging, 130/143 when interrupted by SIGINT/SIGTERM). Anything else that escapes is a bug:
one ``error: internal error: ...`` line, exit 1. ``--debug`` shows the traceback, and lets
library warnings through (they are hidden otherwise: they are meant for developers). Heavy
modules (torch) are imported only by the subcommands that compute, so ``--help``, ``plan``
and ``methods`` stay fast. The subcommands and their options are in :mod:`meldkit.cli.parser`,
their bodies in :mod:`meldkit.cli.commands`.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

from meldkit.cli import process
from meldkit.cli.parser import build_parser

__all__ = ["main", "run", "build_parser"]


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
    """Run the ``meldkit`` command with ``argv`` (default: ``sys.argv[1:]``); returns the exit
    code. A usage error exits through argparse (``SystemExit(2)``, the subcommand's usage)."""
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
