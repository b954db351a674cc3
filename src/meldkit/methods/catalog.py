"""The built-in methods' specs (torch-free). One ``register(MethodSpec(...))`` per method.

Names, parameters, scopes and defaults follow MergeKit 0.1.5 so published recipes run
unchanged; see docs/methods.md for each formula.
"""

from __future__ import annotations

from meldkit.methods.registry import MethodSpec, ParamSpec, register

register(
    MethodSpec(
        name="linear",
        pretty_name="Linear",
        impl="meldkit.methods.linear:merge",
        params=(
            ParamSpec("weight", "per_input", required=True, doc="weight of each input"),
            ParamSpec("normalize", "shared", kind="bool", default=True,
                      doc="divide by the sum of the weights"),
        ),
        base="ignored",
        min_inputs=1,
        reference_url="https://arxiv.org/abs/2203.05482",
        summary="Weighted average of the inputs (model soups).",
    )
)

register(
    MethodSpec(
        name="passthrough",
        pretty_name="Passthrough",
        impl="meldkit.methods.passthrough:merge",
        params=(
            ParamSpec("scale", "per_input", default=None, doc="optional factor applied to the tensor"),
        ),
        base="optional",
        min_inputs=1,
        max_inputs=1,
        summary="Copies one input unchanged (optionally scaled); used for layer stacking.",
    )
)
