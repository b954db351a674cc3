"""`modules:` recipes on a VLM-shaped checkpoint (text decoder, vision tower, projector)."""

from __future__ import annotations

import json

import torch
from safetensors.torch import save_file

from meldkit.api import run_merge
from meldkit.plan import plan_merge
from meldkit.plan.modules import partition_modules
from meldkit.testing import read_model


def _vlm(path, seed):
    g = torch.Generator().manual_seed(seed)
    t = {}
    for i in range(3):
        t[f"model.language_model.layers.{i}.mlp.up_proj.weight"] = torch.randn(8, 4, generator=g)
        t[f"model.language_model.layers.{i}.input_layernorm.weight"] = torch.randn(4, generator=g)
    for i in range(2):
        t[f"model.vision_tower.encoder.layers.{i}.fc1.weight"] = torch.randn(6, 4, generator=g)
    t["model.language_model.embed_tokens.weight"] = torch.randn(10, 4, generator=g)
    t["model.language_model.norm.weight"] = torch.randn(4, generator=g)
    t["model.multi_modal_projector.linear_1.weight"] = torch.randn(4, 4, generator=g)
    t["lm_head.weight"] = torch.randn(10, 4, generator=g)
    path.mkdir()
    save_file(t, str(path / "model.safetensors"))
    cfg = {
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "text_config": {"num_hidden_layers": 3, "layer_types": ["a", "b", "c"]},
        "vision_config": {"num_hidden_layers": 2},
    }
    (path / "config.json").write_text(json.dumps(cfg))
    return path


def test_partition_modules():
    names = [
        "model.language_model.layers.0.x",
        "model.vision_tower.encoder.layers.0.y",
        "model.multi_modal_projector.w",
        "lm_head.weight",
        "model.visual.z",
    ]
    parts, unclaimed = partition_modules(["text_decoder", "multi_modal_projector"], names)
    assert parts == {
        "text_decoder": ["model.language_model.layers.0.x", "lm_head.weight"],
        "multi_modal_projector": ["model.multi_modal_projector.w"],
    }
    assert unclaimed == ["model.vision_tower.encoder.layers.0.y", "model.visual.z"]


def test_modules_recipe_merges_each_module_with_its_own_models(tmp_path):
    a, b = _vlm(tmp_path / "a", 1), _vlm(tmp_path / "b", 2)
    recipe = f"""
merge_method: linear
modules:
  text_decoder:
    models:
      - {{model: {a}, parameters: {{weight: 0.3}}}}
      - {{model: {b}, parameters: {{weight: 0.7}}}}
  vision_tower:
    models: [{{model: {a}, parameters: {{weight: 1.0}}}}]
  multi_modal_projector:
    models: [{{model: {b}, parameters: {{weight: 1.0}}}}]
"""
    plan = plan_merge(recipe)
    assert plan.output_layers == 3 and plan.out_config["text_config"]["num_hidden_layers"] == 3
    run_merge(recipe, tmp_path / "out", quiet=True)
    out, x, y = read_model(tmp_path / "out"), read_model(a), read_model(b)
    assert set(out) == set(x)
    name = "model.language_model.layers.2.mlp.up_proj.weight"
    assert torch.allclose(out[name], 0.3 * x[name] + 0.7 * y[name])
    assert torch.equal(
        out["model.vision_tower.encoder.layers.1.fc1.weight"],
        x["model.vision_tower.encoder.layers.1.fc1.weight"],
    )
    assert torch.equal(
        out["model.multi_modal_projector.linear_1.weight"],
        y["model.multi_modal_projector.linear_1.weight"],
    )
    assert torch.allclose(
        out["lm_head.weight"], 0.3 * x["lm_head.weight"] + 0.7 * y["lm_head.weight"]
    )


def test_modules_with_slices_restack_only_the_text_decoder(tmp_path):
    a, b = _vlm(tmp_path / "a", 1), _vlm(tmp_path / "b", 2)
    recipe = f"""
merge_method: passthrough
modules:
  text_decoder:
    slices:
      - sources: [{{model: {a}, layer_range: [0, 3]}}]
      - sources: [{{model: {b}, layer_range: [1, 3]}}]
  vision_tower:
    models: [{{model: {a}}}]
  multi_modal_projector:
    models: [{{model: {a}}}]
"""
    plan = plan_merge(recipe)
    assert plan.output_layers == 5
    assert plan.out_config["text_config"]["num_hidden_layers"] == 5
    assert plan.out_config["text_config"]["layer_types"] == ["a", "b", "c", "b", "c"]
    assert plan.out_config["vision_config"]["num_hidden_layers"] == 2
    names = {t.name: t for t in plan.tensors}
    assert (
        names["model.language_model.layers.4.mlp.up_proj.weight"].sources[0].name
        == "model.language_model.layers.2.mlp.up_proj.weight"
    )
    assert "model.vision_tower.encoder.layers.1.fc1.weight" in names


def test_module_missing_from_recipe_warns(tmp_path):
    a = _vlm(tmp_path / "a", 1)
    plan = plan_merge(
        f"merge_method: passthrough\nmodules:\n  text_decoder:\n    models: [{{model: {a}}}]\n"
    )
    assert any("belong to no module of the recipe and are not written" in w for w in plan.warnings)
