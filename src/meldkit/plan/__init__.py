"""Planning: recipe + input headers -> a checked MergePlan (no tensor bytes read)."""

from meldkit.plan.planner import MergePlan, PlanOptions, TensorPlan, TensorSource, plan_merge

__all__ = ["MergePlan", "PlanOptions", "TensorPlan", "TensorSource", "plan_merge"]
