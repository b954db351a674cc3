"""The Python API: run_merge / plan_merge / load_config take a path, YAML text, a dict or a config."""

from __future__ import annotations

import pytest

import meldkit
from meldkit.testing import read_model


def test_recipe_forms_give_the_same_merge(llama_family, tmp_path):
    base, (a, b) = llama_family
    recipe = {
        "merge_method": "linear",
        "models": [
            {"model": str(a), "parameters": {"weight": 1}},
            {"model": str(b), "parameters": {"weight": 3}},
        ],
    }
    path = tmp_path / "r.yaml"
    import yaml

    path.write_text(yaml.safe_dump(recipe))
    forms = {
        "dict": recipe,
        "text": path.read_text(),
        "path": path,
        "config": meldkit.load_config(recipe),
    }
    outputs = {}
    for name, form in forms.items():
        plan = meldkit.run_merge(form, tmp_path / name, quiet=True)
        assert isinstance(plan, meldkit.MergePlan)
        outputs[name] = (tmp_path / name / "model.safetensors").read_bytes()
    assert len(set(outputs.values())) == 1
    merged, x, y = read_model(tmp_path / "dict"), read_model(a), read_model(b)
    name = "model.layers.2.self_attn.o_proj.weight"
    assert (merged[name] - (x[name] + 3 * y[name]) / 4).abs().max() < 1e-6


def test_plan_merge_and_unknown_option(llama_family, tmp_path):
    base, (a, b) = llama_family
    recipe = f"merge_method: passthrough\nmodels: [{{model: {a}}}]\n"
    plan = meldkit.plan_merge(recipe, out_shard_size=10_000)
    assert len(plan.shards) > 1 and plan.bytes_to_write > 0
    with pytest.raises(meldkit.MeldError, match="unknown option"):
        meldkit.run_merge(recipe, tmp_path / "o", colour="blue")
