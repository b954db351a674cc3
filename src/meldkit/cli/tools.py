"""The side tools' subcommands (``moe``, ``multi``, ``extract-lora``...), each defined by its
own package.

A tool package has a ``cli`` module with ``add_parser(sub)``, which adds its subcommand to the
``meldkit`` parser and sets ``func`` to the function that runs it. The ``cli`` module must not
import torch or any other heavy module at import time: ``meldkit --help`` imports every one of
them. The core (config, plan, io, methods, execute) never imports a tool; only the command line
does, here.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["TOOL_MODULES", "add_tool_parsers"]

# One line per tool, in the order `meldkit --help` lists them.
TOOL_MODULES: tuple[str, ...] = (
    "meldkit.multi.cli",
    "meldkit.raw.cli",
    "meldkit.moe.cli",
    "meldkit.extract_lora.cli",
    "meldkit.tokensurgeon.cli",
    "meldkit.evolve.cli",
)


def add_tool_parsers(sub: Any) -> None:
    """Add every tool's subcommand to ``sub`` (the ``meldkit`` subparsers)."""
    for name in TOOL_MODULES:
        importlib.import_module(name).add_parser(sub)
