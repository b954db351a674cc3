"""The built-in methods' specs (torch-free). One ``register(MethodSpec(...))`` per method.

Names, parameters, scopes and defaults follow MergeKit 0.1.5 so published recipes run
unchanged; see docs/methods.md for each formula and docs/compatibility.md for the places where
we deliberately differ. The eight task-vector methods share one formula
(:mod:`meldkit.methods.task_vectors`); :data:`~meldkit.methods.task_vector_family.TASK_VECTOR_FAMILY`
describes each member and is read by both the specs below and the math.

``impl`` names each method's reference formula (torch), ``fast_impl`` its optimized twin in
:mod:`meldkit.kernels`, if any; :func:`meldkit.methods.registry.load_merge_function` chooses.
"""

from __future__ import annotations

from meldkit.methods.checks import check_della, check_linear, check_multislerp
from meldkit.methods.registry import MethodSpec, ParamSpec, register
from meldkit.methods.task_vector_family import TASK_VECTOR_FAMILY, TaskVectorVariant

__all__: list[str] = []


# ---------------------------------------------------------------------------------------------
# Simple and spherical methods.

register(
    MethodSpec(
        name="linear",
        elementwise=True,
        native_inputs=True,
        pretty_name="Linear",
        impl="meldkit.methods.linear:linear",
        params=(
            ParamSpec("weight", "per_input", required=True, doc="weight of each input"),
            ParamSpec(
                "normalize",
                "shared",
                kind="bool",
                default=True,
                doc="divide by the sum of the weights",
            ),
        ),
        base="ignored",
        min_inputs=1,
        reference_url="https://arxiv.org/abs/2203.05482",
        summary="Weighted average of the inputs (model soups).",
        check=check_linear,
    )
)

register(
    MethodSpec(
        name="passthrough",
        elementwise=True,
        pretty_name="Passthrough",
        impl="meldkit.methods.passthrough:passthrough",
        params=(
            ParamSpec(
                "scale", "per_input", default=None, doc="optional factor applied to the tensor"
            ),
        ),
        base="optional",
        min_inputs=1,
        max_inputs=1,
        summary="Copies one input unchanged (optionally scaled); used for layer stacking.",
    )
)

register(
    MethodSpec(
        name="slerp",
        native_inputs=True,
        pretty_name="SLERP",
        impl="meldkit.methods.slerp:slerp",
        fast_impl="meldkit.kernels.combination:slerp",
        params=(
            ParamSpec(
                "t",
                "shared",
                required=True,
                doc="interpolation factor: 0 gives the base, 1 the other model",
            ),
        ),
        base="required",
        min_inputs=2,
        max_inputs=2,
        optional_policy="passthrough_single",
        reference_url="https://en.wikipedia.org/wiki/Slerp",
        summary="Spherical interpolation between the base and one other model.",
    )
)

register(
    MethodSpec(
        name="nuslerp",
        pretty_name="NuSLERP",
        impl="meldkit.methods.nuslerp:nuslerp",
        fast_impl="meldkit.kernels.combination:nuslerp",
        native_inputs=True,  # blocked Gram + combination passes read the stored dtype
        params=(
            ParamSpec(
                "weight", "per_non_base", required=True, doc="relative weight; t = w2 / (w1 + w2)"
            ),
            ParamSpec(
                "nuslerp_flatten",
                "shared",
                kind="bool",
                default=True,
                doc="treat the whole tensor as one vector",
            ),
            ParamSpec(
                "nuslerp_row_wise",
                "shared",
                kind="bool",
                default=False,
                doc="without flatten: interpolate along the first axis instead of the last",
            ),
        ),
        base="optional",
        min_inputs=2,
        max_inputs=3,
        min_non_base=2,
        max_non_base=2,
        optional_policy="passthrough_single",
        reference_url="https://en.wikipedia.org/wiki/Slerp",
        summary="SLERP with weights, row-wise options and an optional base (task vectors).",
    )
)

register(
    MethodSpec(
        name="multislerp",
        pretty_name="Multi-SLERP",
        impl="meldkit.methods.multislerp:multislerp",
        fast_impl="meldkit.kernels.combination:multislerp",
        native_inputs=True,  # blocked Gram + combination passes read the stored dtype
        params=(
            ParamSpec("weight", "per_non_base", required=True, doc="weight of each model"),
            ParamSpec(
                "normalize_weights",
                "shared",
                kind="bool",
                default=True,
                doc="divide the weights by their sum",
            ),
            ParamSpec(
                "eps",
                "shared",
                default=1e-8,
                minimum=0.0,
                doc="added to norms to avoid division by zero",
            ),
        ),
        base="optional",
        min_inputs=1,
        min_non_base=1,
        reference_url="https://mathweb.ucsd.edu/~sbuss/ResearchWeb/spheremean/",
        summary="Weighted spherical mean of any number of models (one tangent-space step).",
        check=check_multislerp,
    )
)

register(
    MethodSpec(
        name="karcher",
        pretty_name="Karcher Mean",
        impl="meldkit.methods.karcher:karcher",
        fast_impl="meldkit.kernels.combination:karcher",
        native_inputs=True,  # blocked Gram + combination passes read the stored dtype
        params=(
            ParamSpec(
                "max_iter", "shared", kind="int", default=10, doc="maximum number of iterations"
            ),
            ParamSpec(
                "tol",
                "shared",
                default=1e-5,
                minimum=0.0,
                doc="convergence tolerance (also the smallest norm an input may have)",
            ),
        ),
        base="ignored",
        min_inputs=1,
        reference_url="https://en.wikipedia.org/wiki/Karcher_mean",
        summary="Riemannian (Karcher) mean of the inputs on the sphere, uniform weights.",
    )
)

# ---------------------------------------------------------------------------------------------
# The task-vector family: one pipeline, eight names.


def _task_vector_params(name: str, variant: TaskVectorVariant) -> tuple[ParamSpec, ...]:
    params = [
        ParamSpec(
            "weight",
            "per_non_base",
            required=True,
            doc="scale of the model's task vector (negative subtracts it)",
        ),
        ParamSpec(
            "density",
            "per_non_base",
            default=1.0,
            minimum=0.0,
            maximum=1.0,
            doc="fraction of the task vector kept by the sparsifier",
        ),
    ]
    if variant.sparsifier == "magnitude_outliers":
        params.append(
            ParamSpec(
                "gamma",
                "per_non_base",
                default=0.01,
                minimum=0.0,
                maximum=1.0,
                doc="fraction of largest-magnitude entries dropped",
            )
        )
    if variant.sparsifier == "della_magprune":
        params.append(
            ParamSpec(
                "epsilon",
                "per_non_base",
                default=0.15,
                minimum=0.0,
                doc="keep probabilities span density - epsilon .. density + epsilon",
            )
        )
    params += [
        ParamSpec(
            "int8_mask",
            "shared",
            kind="bool",
            default=False,
            doc="accepted for compatibility; masks are boolean here anyway",
        ),
        ParamSpec(
            "normalize",
            "shared",
            kind="bool",
            default=variant.normalize,
            doc="divide the mixed task vector by the sum of the (agreeing) weights",
        ),
        ParamSpec(
            "rescale",
            "shared",
            kind="bool",
            default=variant.rescale,
            doc="after sparsifying, restore each task vector's L1 norm",
        ),
        ParamSpec(
            "lambda",
            "shared",
            default=1.0,
            doc="factor applied to the mixed task vector (after normalize)",
        ),
    ]
    return tuple(params)


for _name, _variant in TASK_VECTOR_FAMILY.items():
    register(
        MethodSpec(
            name=_name,
            pretty_name=_variant.pretty_name,
            impl=f"meldkit.methods.task_vectors:{_name}",
            fast_impl=f"meldkit.kernels.task_vectors:{_name}",
            params=_task_vector_params(_name, _variant),
            base="required",
            min_inputs=1,
            reference_url=_variant.reference_url,
            randomized=_variant.sparsifier in ("random", "della_magprune"),
            # Without sparsifier or sign election every element is independent.
            elementwise=_variant.sparsifier is None and not _variant.consensus,
            native_inputs=True,
            summary=_variant.summary,
            check=check_della if _variant.sparsifier == "della_magprune" else None,
        )
    )

# ---------------------------------------------------------------------------------------------
# Other base-relative methods.

register(
    MethodSpec(
        name="sce",
        pretty_name="SCE",
        impl="meldkit.methods.sce:sce",
        fast_impl="meldkit.kernels.sce:sce",
        native_inputs=True,  # blocked passes read the stored dtype
        params=(
            ParamSpec(
                "int8_mask",
                "shared",
                kind="bool",
                default=False,
                doc="accepted for compatibility; masks are boolean here anyway",
            ),
            ParamSpec(
                "select_topk",
                "shared",
                default=1.0,
                doc="fraction of positions (by variance across models) kept",
            ),
        ),
        base="required",
        min_inputs=1,
        reference_url="https://arxiv.org/abs/2408.07990",
        summary="Select by variance, calculate weights from energy, erase minority signs.",
    )
)

register(
    MethodSpec(
        name="ram",
        elementwise=True,
        native_inputs=True,  # the fused kernels read the stored dtype
        pretty_name="Reinforced Agent Merging",
        impl="meldkit.methods.ram:ram",
        fast_impl="meldkit.kernels.ram:ram",
        params=(
            ParamSpec(
                "epsilon",
                "shared",
                default=1e-5,
                doc="task-vector entries with |delta| <= epsilon count as inactive",
            ),
        ),
        base="required",
        min_inputs=1,
        summary="Unique task-vector entries are kept, shared ones averaged over their owners.",
    )
)

register(
    MethodSpec(
        name="ramplus_tl",
        pretty_name="RAM+ (tensor-local)",
        impl="meldkit.methods.ramplus_tl:ramplus_tl",
        fast_impl="meldkit.kernels.ram:ramplus_tl",
        native_inputs=True,  # two blocked passes read the stored dtype
        params=(
            ParamSpec(
                "epsilon",
                "shared",
                default=1e-5,
                doc="task-vector entries with |delta| <= epsilon count as inactive",
            ),
            ParamSpec("r", "shared", default=0.1, doc="strength of the unique-part boost"),
            ParamSpec("alpha", "shared", default=0.2, doc="cap on the shared/unique ratio"),
        ),
        base="required",
        min_inputs=1,
        summary="RAM with each model's unique part boosted by its shared/unique ratio.",
    )
)

register(
    MethodSpec(
        name="model_stock",
        pretty_name="Model Stock",
        impl="meldkit.methods.model_stock:model_stock",
        fast_impl="meldkit.kernels.combination:model_stock",
        native_inputs=True,  # blocked Gram + combination passes read the stored dtype
        params=(
            ParamSpec(
                "filter_wise",
                "shared",
                kind="bool",
                default=False,
                doc="compute the interpolation ratio per row instead of per tensor",
            ),
        ),
        base="required",
        min_inputs=3,
        min_non_base=2,
        optional_policy="need_three",
        reference_url="https://arxiv.org/abs/2403.19522",
        summary="Moves from the base toward the models' mean by a ratio set by their angle.",
    )
)

register(
    MethodSpec(
        name="arcee_fusion",
        pretty_name="Arcee Fusion",
        impl="meldkit.methods.arcee_fusion:arcee_fusion",
        fast_impl="meldkit.kernels.arcee_fusion:arcee_fusion",
        native_inputs=True,  # blocked passes read the stored dtype
        params=(),
        base="required",
        min_inputs=2,
        max_inputs=2,
        optional_policy="passthrough_single",
        randomized=True,
        summary="Takes the other model's values where their importance is an outlier.",
    )
)

register(
    MethodSpec(
        name="nearswap",
        elementwise=True,
        native_inputs=True,  # the fused kernel reads the stored dtype
        pretty_name="NearSwap",
        impl="meldkit.methods.nearswap:nearswap",
        fast_impl="meldkit.kernels.nearswap:nearswap",
        params=(
            ParamSpec(
                "t",
                "shared",
                required=True,
                doc="distance scale: entries closer than t take the other model's value",
            ),
        ),
        base="required",
        min_inputs=2,
        max_inputs=2,
        optional_policy="passthrough_base",
        reference_url="https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001",
        summary="Interpolates toward the other model where it is close to the base.",
    )
)

# The data-free methods beyond MergeKit (tsv, iso_c, ...) register from their own module.
import meldkit.methods.catalog_beyond  # noqa: E402, F401
