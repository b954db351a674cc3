"""Planning the modifiers (:mod:`meldkit.methods.modifiers`) of each output tensor.

Their parameters are resolved like a method's shared parameters (slice, module, top level;
gradients and filters on the output tensor name), whatever the method. LiNeS' depth is the
tensor's layer in the output stack of its module, ``l / (L - 1)`` with ``L`` the module's
output layers; tensors before the stack (embeddings) sit at depth 0, tensors after it (final
norm, LM head) at depth 1. Both modifiers need the base among the tensor's inputs; a tensor
merged without one is a problem, reported at plan time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from meldkit.config.schema import Parameters
from meldkit.methods.modifiers import MODIFIERS_SPEC, NORM_MODES, lines_scale
from meldkit.methods.registry import MethodSpec
from meldkit.plan.parameters import ProblemLog, resolve_tensor_parameters
from meldkit.plan.types import TensorPlan

__all__ = ["TensorModifiers", "resolve_modifiers", "finish_norm_match"]


@dataclass(frozen=True)
class TensorModifiers:
    """What the modifiers do to one tensor: LiNeS' scale (None: off) and the norm mode."""

    lines_scale: float | None = None
    norm_match: str | None = None


def resolve_modifiers(
    method: MethodSpec,
    out_name: str,
    shared_scopes: Sequence[Parameters | None],
    depth: float,
    has_base: bool,
    log: ProblemLog,
) -> TensorModifiers:
    """The modifiers of tensor ``out_name`` at LiNeS depth ``depth`` (in [0, 1])."""
    values, _ = resolve_tensor_parameters(
        MODIFIERS_SPEC,
        out_name=out_name,
        source_names=(),
        source_scopes=(),
        source_labels=(),
        shared_scopes=shared_scopes,
        base_index=None,
        t=depth,
        log=log,
    )
    alpha, beta, mode = values["lines_alpha"], values["lines_beta"], values["norm_match"]
    scale = None
    if (alpha is None) != (beta is None):
        given, other = (
            ("lines_alpha", "lines_beta") if beta is None else ("lines_beta", "lines_alpha")
        )
        log.problem(
            ("lines-half", given),
            f"LiNeS needs both lines_alpha and lines_beta: '{given}' is set but '{other}' is "
            f"not (first needed by tensor {out_name})",
        )
    elif isinstance(alpha, float) and isinstance(beta, float):
        scale = lines_scale(alpha, beta, depth)
    if mode is not None and mode not in NORM_MODES:
        log.problem(
            ("norm-mode", mode),
            f"parameter 'norm_match' for the merge: expected mean, min, max or none, got {mode!r}",
        )
        mode = None
    if mode == "none":
        mode = None
    if not has_base and (scale is not None or mode is not None):
        used = [n for n, on in (("LiNeS", scale is not None), ("norm_match", mode)) if on]
        log.problem(
            ("modifier-nobase", *used),
            f"{' and '.join(used)} need{'s' if len(used) == 1 else ''} a base model, but "
            f"{method.name} merges tensor {out_name} without one; add `base_model:` "
            "(with a method that takes one) or remove the modifier",
        )
        return TensorModifiers()
    return TensorModifiers(scale, mode)


def finish_norm_match(
    tensors: Sequence[TensorPlan], modes: set[str], log: ProblemLog
) -> str | None:
    """The merge's one norm mode (a problem when the tensors ask for several), and a warning
    for tensors whose rows the tokenizer step re-indexes: they are left out (their task
    vectors do not exist before re-indexing), so they are merged as given."""
    if len(modes) > 1:
        log.problem(
            ("norm-modes",),
            f"norm_match takes one target for the whole merge, got {', '.join(sorted(modes))}; "
            "use one of them (none leaves a tensor out)",
        )
        return None
    skipped = [t.name for t in tensors if t.norm_match and t.vocabulary is not None]
    for t in tensors:
        if t.vocabulary is not None:
            t.norm_match = False
    if skipped:
        log.warn(
            ("norm-vocab",),
            f"norm_match leaves out {', '.join(skipped)}: the tokenizer step re-indexes their "
            "rows, so they are merged without rescaling",
        )
    return next(iter(modes), None)
