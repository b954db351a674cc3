"""Recipes: YAML -> MergeConfig (schema, loader, model references, parameter resolution)."""

from meldkit.config.load import load_config, parse_config
from meldkit.config.modelref import ModelPath, ModelRef, parse_model_ref
from meldkit.config.params import evaluate_setting, layer_depth, resolve_parameter
from meldkit.config.schema import MergeConfig

__all__ = [
    "MergeConfig",
    "ModelPath",
    "ModelRef",
    "evaluate_setting",
    "layer_depth",
    "load_config",
    "parse_config",
    "parse_model_ref",
    "resolve_parameter",
]
