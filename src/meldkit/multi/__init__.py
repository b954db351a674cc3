"""Multi-stage recipes (``meldkit multi``): MergeKit's ``mergekit-multi``.

A YAML file of several merge documents; a document's ``name:`` makes its output a model of the
later ones. :func:`parse_stages` reads and orders the stages, :func:`plan_chain` plans every
stage before any runs, :func:`run_chain` runs them (reusing cached intermediates, or streaming
them with ``ChainOptions(stream=True)``), :func:`describe_chain` is what ``meldkit plan``
prints for such a file. ``run_chain`` imports torch; the rest does not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meldkit.multi.chain import ChainOptions, ChainPlan, StagePlan, plan_chain
from meldkit.multi.stages import Stage, StageGraph, is_multi_stage, parse_stages
from meldkit.multi.summary import chain_to_dict, describe_chain

if TYPE_CHECKING:
    from meldkit.multi.run import ChainResult

__all__ = [
    "ChainOptions",
    "ChainPlan",
    "ChainResult",
    "Stage",
    "StageGraph",
    "StagePlan",
    "chain_to_dict",
    "describe_chain",
    "is_multi_stage",
    "parse_stages",
    "plan_chain",
    "run_chain",
]


def __getattr__(name: str) -> Any:
    # run_chain and ChainResult import torch (through the engine): only when asked for.
    if name in ("run_chain", "ChainResult"):
        from meldkit.multi import run

        return getattr(run, name)
    raise AttributeError(f"module 'meldkit.multi' has no attribute {name!r}")
