"""Specs of the data-free methods MergeKit does not have (torch-free): tsv, iso_c, iso_cts,
wudi, pcb, magmax and consensus. :mod:`meldkit.methods.catalog` imports this module, so
they register with the built-ins; docs/methods.md gives each formula and its defaults for
language models."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from meldkit.methods.checks import check_consensus, check_spectral, check_wudi
from meldkit.methods.registry import MethodSpec, ParamSpec, register

__all__: list[str] = []


def _consensus_elementwise(
    shared: Mapping[str, Any], per_input: Sequence[Mapping[str, Any]]
) -> bool:
    """Over task arithmetic every entry is its own (the masks compare entries of the same
    position); over TIES the density's trim ranks each tensor's magnitudes."""
    return (shared.get("base_method") or "task_arithmetic") != "ties"


def _weight() -> ParamSpec:
    return ParamSpec(
        "weight",
        "per_non_base",
        default=1.0,
        doc="factor on the model's task vector before merging (negative subtracts it)",
    )


def _embeddings() -> ParamSpec:
    return ParamSpec(
        "embeddings",
        "shared",
        kind="str",
        default="matrix",
        doc="token embeddings and LM heads: 'matrix' (factorised like any weight) or 'mean' "
        "(the mean of the task vectors, like norms and biases)",
    )


def _scale(name: str, default: float, doc: str) -> ParamSpec:
    return ParamSpec(name, "shared", default=default, doc=doc)


# ---------------------------------------------------------------------------------------------
# Spectral family: per 2-D weight, the mean of the task vectors elsewhere.

register(
    MethodSpec(
        name="tsv",
        pretty_name="TSV-M (Task Singular Vectors)",
        impl="meldkit.methods.tsv:tsv",
        params=(
            _weight(),
            ParamSpec(
                "rank_fraction",
                "shared",
                default=None,
                minimum=0.0,
                maximum=1.0,
                doc="fraction of r = min(rows, cols) kept per task (default 1/T)",
            ),
            _scale("alpha", 1.0, "factor on the merged task vector"),
            _embeddings(),
        ),
        base="required",
        min_inputs=1,
        reference_url="https://arxiv.org/abs/2412.00081",
        summary="Top singular vectors of each task, decorrelated by the polar factor, summed.",
        check=check_spectral("tsv"),
    )
)

register(
    MethodSpec(
        name="iso_c",
        pretty_name="Iso-C (isotropic merging, common subspace)",
        impl="meldkit.methods.iso_c:iso_c",
        params=(
            _weight(),
            _scale("alpha", 1.0, "factor on the isotropic task vector"),
            _embeddings(),
        ),
        base="required",
        min_inputs=1,
        reference_url="https://arxiv.org/abs/2502.04959",
        summary="The summed task vector with a flat spectrum (every singular value its mean).",
        check=check_spectral("iso_c"),
    )
)

register(
    MethodSpec(
        name="iso_cts",
        pretty_name="Iso-CTS (isotropic merging, common and task-specific subspaces)",
        impl="meldkit.methods.iso_cts:iso_cts",
        params=(
            _weight(),
            ParamSpec(
                "common_fraction",
                "shared",
                default=0.8,
                minimum=0.0,
                maximum=1.0,
                doc="fraction of r taken from the summed task vector; the rest is split "
                "between the tasks' own directions",
            ),
            _scale("alpha", 1.0, "factor on the isotropic task vector"),
            _embeddings(),
        ),
        base="required",
        min_inputs=1,
        reference_url="https://arxiv.org/abs/2502.04959",
        summary="Iso-C on the common subspace plus each task's own top directions, flat spectrum.",
        check=check_spectral("iso_cts"),
    )
)

register(
    MethodSpec(
        name="wudi",
        pretty_name="WUDI-merging",
        impl="meldkit.methods.wudi:wudi",
        params=(
            _scale("lambda", 1.0, "factor on the merged task vector"),
            ParamSpec(
                "solver",
                "shared",
                kind="str",
                default="adam",
                doc="'adam' (the paper's iterations) or 'closed' (the exact least-squares "
                "solution: one factorisation, but far worse on TinyTasks)",
            ),
            ParamSpec(
                "rcond",
                "shared",
                default=1e-5,
                minimum=0.0,
                doc="closed: eigenvalues of A below rcond times the largest are dropped",
            ),
            ParamSpec(
                "steps",
                "shared",
                kind="int",
                default=30,
                minimum=1,
                doc="adam: iterations (the paper: 300 at lr 1e-5; 30 at 1e-4 scores the same "
                "on TinyTasks at a tenth of the cost)",
            ),
            ParamSpec("lr", "shared", default=1e-4, minimum=0.0, doc="adam: learning rate"),
            _embeddings(),
        ),
        base="required",
        min_inputs=1,
        reference_url="https://arxiv.org/abs/2503.08099",
        summary="The task vector that least disturbs each task's own input directions.",
        check=check_wudi,
    )
)

# ---------------------------------------------------------------------------------------------
# Element-wise family.

register(
    MethodSpec(
        name="magmax",
        elementwise=True,
        pretty_name="MagMax",
        impl="meldkit.methods.magmax:magmax",
        params=(_scale("lambda", 1.0, "factor on the selected task-vector values"),),
        base="required",
        min_inputs=1,
        reference_url="https://arxiv.org/abs/2407.06322",
        summary="Per entry, the task-vector value of largest magnitude, scaled by lambda.",
    )
)

register(
    MethodSpec(
        name="pcb",
        pretty_name="PCB-merging",
        impl="meldkit.methods.pcb:pcb",
        params=(
            ParamSpec(
                "ratio",
                "shared",
                default=0.1,
                minimum=0.0,
                maximum=1.0,
                doc="fraction of each task's entries kept, by balanced score",
            ),
            ParamSpec(
                "clamp",
                "shared",
                default=1e-4,
                minimum=0.0,
                maximum=0.5,
                doc="fraction of each tail of |task vector| clamped before scoring",
            ),
            _scale("lambda", 1.0, "factor on the merged task vector"),
        ),
        base="required",
        min_inputs=1,
        reference_url="https://arxiv.org/abs/2410.02396",
        summary="Scores entries by importance within and agreement across tasks, keeps the top.",
    )
)

register(
    MethodSpec(
        name="consensus",
        pretty_name="Consensus merging (TALL masks)",
        impl="meldkit.methods.consensus:consensus",
        params=(
            _weight(),
            ParamSpec(
                "mask_lambda",
                "per_non_base",
                default=0.4,
                minimum=0.0,
                doc="TALL mask threshold: task t keeps entries where |v_t| >= mask_lambda "
                "|sum - v_t| (the paper tunes it in 0.2-0.6)",
            ),
            ParamSpec(
                "k",
                "shared",
                kind="int",
                default=2,
                minimum=0,
                doc="keep the entries that at least k task masks mark",
            ),
            ParamSpec(
                "base_method",
                "shared",
                kind="str",
                default="task_arithmetic",
                doc="the merge the mask is applied to: 'task_arithmetic' or 'ties'",
            ),
            ParamSpec(
                "density",
                "per_non_base",
                default=1.0,
                minimum=0.0,
                maximum=1.0,
                doc="ties: fraction of each task vector kept by magnitude",
            ),
            ParamSpec(
                "normalize",
                "shared",
                kind="bool",
                default=True,
                doc="ties: divide by the sum of the agreeing weights",
            ),
            _scale("lambda", 1.0, "factor on the merged task vector"),
        ),
        base="required",
        min_inputs=1,
        reference_url="https://arxiv.org/abs/2405.07813",
        summary="Task arithmetic or TIES, keeping only the entries at least k tasks need.",
        check=check_consensus,
        elementwise_when=_consensus_elementwise,
    )
)
