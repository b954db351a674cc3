"""``meldkit moe``: mixtures of experts built from dense models (MergeKit's ``mergekit-moe``).

The pipeline, one module each: the recipe (:mod:`~meldkit.moe.config`), the output
architectures (:mod:`~meldkit.moe.architectures`), the plan from headers
(:mod:`~meldkit.moe.plan`, :mod:`~meldkit.moe.tensors`), the routers
(:mod:`~meldkit.moe.routers`), the streaming build (:mod:`~meldkit.moe.build`), the model card
(:mod:`~meldkit.moe.card`) and the command line (:mod:`~meldkit.moe.cli`). Hidden-state routers
run the base model in :mod:`meldkit.moe.hidden_states`.
"""

from __future__ import annotations

from meldkit.moe.config import MoeConfig, load_moe_config
from meldkit.moe.plan import MoeOptions, MoePlan, plan_moe

__all__ = ["MoeConfig", "MoeOptions", "MoePlan", "load_moe_config", "plan_moe"]
