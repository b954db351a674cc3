"""Planning: recipe + input headers -> a checked MergePlan (no tensor bytes read)."""

from meldkit.plan.planner import plan_merge
from meldkit.plan.types import MergePlan, PlanOptions, TensorPlan, TensorSource

__all__ = ["MergePlan", "PlanOptions", "TensorPlan", "TensorSource", "plan_merge"]
