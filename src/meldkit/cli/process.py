"""Process-level tricks of the ``meldkit`` command, in one place.

They change how the process runs, never what it computes, and only the command uses them
(:func:`meldkit.cli.main.run`): a library caller's process is its own business.

* ``omp_passive`` (:func:`prepare`): ``OMP_WAIT_POLICY=PASSIVE`` before torch loads, unless
  the user set a policy. torch's OpenMP workers otherwise spin after every parallel region (the
  result's NaN/Inf check, the eager methods' ops), taking CPU from the reader, writer and
  kernel threads beside them; sleeping at once costs microseconds per region.
* ``gc_freeze`` (:func:`engine_import`, around the merge command's import of the engine, after
  planning, so a recipe that fails to plan never imports torch): importing torch creates some
  million long-lived objects, none of them garbage, which the cyclic collector would rescan as
  they come and in every full collection after (while numba loads its kernels). The collector
  stays off during the import, and :func:`gc.freeze` then moves what it created out of its
  sight.
* ``fast_exit`` (:func:`finish`): once ``main`` has returned, everything it wrote is complete
  (fsynced and renamed into place), so the process flushes its output and ends with
  ``os._exit``, skipping the interpreter's teardown, which garbage-collects torch's and numba's
  module graphs for nothing the finished command needs.

``benchmarks/tricks.py`` checks that each still pays for itself (its docstring has the numbers:
the OpenMP policy saves 0.7-2.6 s of CPU per `small` merge, the other two up to about a second).
It switches tricks off with the environment variable ``MELDKIT_TRICKS_OFF``, a comma-separated
list of the names above: a benchmark switch, not a user setting.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

__all__ = ["TRICKS", "TRICKS_OFF_ENV", "enabled", "prepare", "engine_import", "finish"]

#: The names of the tricks, as ``MELDKIT_TRICKS_OFF`` lists them.
TRICKS = ("omp_passive", "gc_freeze", "fast_exit")

#: The environment variable that switches tricks off (for ``benchmarks/tricks.py``).
TRICKS_OFF_ENV = "MELDKIT_TRICKS_OFF"


def _switched_off() -> set[str]:
    raw = os.environ.get(TRICKS_OFF_ENV, "")
    return {name.strip() for name in raw.split(",") if name.strip()}


def enabled(trick: str) -> bool:
    """Whether ``trick`` (one of :data:`TRICKS`) is on: it is, unless ``MELDKIT_TRICKS_OFF``
    names it."""
    return trick not in _switched_off()


def prepare() -> None:
    """Before :func:`~meldkit.cli.main.main`: the settings that must precede torch's import."""
    unknown = sorted(_switched_off() - set(TRICKS))
    if unknown:
        print(
            f"warning: {TRICKS_OFF_ENV} names unknown trick(s) {', '.join(unknown)} "
            f"(known: {', '.join(TRICKS)})",
            file=sys.stderr,
        )
    if enabled("omp_passive"):
        # Only read when OpenMP starts, i.e. when torch is imported: subcommands that compute
        # import it after this. A value the user set wins.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@contextmanager
def engine_import() -> Iterator[None]:
    """Around the import of the engine (torch and the kernels), after planning: no cyclic
    collection while it runs, and what it created is frozen (never collected) afterwards."""
    if not enabled("gc_freeze"):
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def finish(code: int) -> NoReturn:
    """End the process with exit status ``code`` once the command is complete."""
    if not enabled("fast_exit"):
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing left to tell anyone
            pass
    os._exit(code)
