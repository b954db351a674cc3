"""Planning MoE builds from headers: output architecture, tensor layout, every problem at once."""

from __future__ import annotations

import subprocess
import sys

import pytest

from meldkit.errors import PlanError
from meldkit.moe import MoeOptions, plan_moe
from tests.moe.conftest import moe_recipe


def test_mixtral_fused_layout(family) -> None:
    base, fts = family("llama")
    plan = plan_moe(moe_recipe(base, fts[:2]))
    assert (plan.arch.name, plan.dtype, plan.num_layers, plan.hidden) == ("mixtral", "F32", 2, 16)
    layer0 = {t.name: t.spec.shape for t in plan.tensors if t.name.startswith("model.layers.0.")}
    assert layer0["model.layers.0.mlp.gate.weight"] == (2, 16)
    assert layer0["model.layers.0.mlp.experts.gate_up_proj"] == (2, 64, 16)
    assert layer0["model.layers.0.mlp.experts.down_proj"] == (2, 16, 32)
    assert not any(".mlp.gate_proj" in n or ".mlp.up_proj" in n for n in layer0)
    assert "model.layers.0.self_attn.q_proj.weight" in layer0
    assert plan.out_config["num_local_experts"] == 2
    assert plan.out_config["model_type"] == "mixtral"
    # one expert projection at a time: gate+up of one expert, read F32, math F32, written F32
    assert plan.peak_bytes == (32 + 32) * 16 * 12


def test_per_expert_layout_and_plan_output(family, tmp_path, capsys) -> None:
    base, fts = family("llama")
    plan = plan_moe(moe_recipe(base, fts[:2]), MoeOptions(expert_layout="per-expert"))
    names = {t.name for t in plan.tensors}
    assert "model.layers.1.block_sparse_moe.gate.weight" in names
    for e in (0, 1):
        for w in ("w1", "w2", "w3"):
            assert f"model.layers.1.block_sparse_moe.experts.{e}.{w}.weight" in names


def test_qwen2_moe_shared_expert_and_zero_biases(family) -> None:
    base, fts = family("llama")
    recipe = moe_recipe(base, fts[:2], architecture="qwen")
    recipe["shared_experts"] = [{"source_model": str(fts[2]), "positive_prompts": ["all"]}]
    plan = plan_moe(recipe)
    kinds = {t.name: t.kind for t in plan.tensors}
    assert plan.arch.model_type == "qwen2_moe"
    assert kinds["model.layers.0.mlp.shared_expert.down_proj.weight"] == "expert"
    assert kinds["model.layers.0.mlp.shared_expert_gate.weight"] == "shared_gate"
    assert kinds["model.layers.0.self_attn.q_proj.bias"] == "zeros"
    # per-expert by default, as MergeKit writes Qwen2-MoE
    assert kinds["model.layers.0.mlp.experts.1.up_proj.weight"] == "expert"
    fused = plan_moe(recipe, MoeOptions(expert_layout="fused"))
    assert "model.layers.0.mlp.experts.gate_up_proj" in {t.name for t in fused.tensors}
    assert plan.out_config["shared_expert_intermediate_size"] == 32


def test_automatic_choice(family) -> None:
    base, fts = family("llama")
    recipe = moe_recipe(base, fts[:2])
    recipe["shared_experts"] = [{"source_model": str(fts[2]), "positive_prompts": ["all"]}]
    assert plan_moe(recipe).arch.name == "qwen"  # Mixtral has no shared expert
    qbase, qfts = family("qwen3")
    assert plan_moe(moe_recipe(qbase, qfts[:2], architecture="qwen")).arch.name == "qwen3"


def test_every_problem_at_once(family, tmp_path) -> None:
    base, fts = family("llama")
    recipe = moe_recipe(base, [fts[0], tmp_path / "missing"], experts_per_token=3)
    with pytest.raises(PlanError) as info:
        plan_moe(recipe)
    problems = info.value.problems
    assert problems[0] == "experts_per_token is 3 but the recipe has only 2 expert(s)"
    assert problems[1].startswith(f"model folder '{tmp_path / 'missing'}' does not exist")
    assert len(problems) == 2


@pytest.mark.parametrize(
    ("arch", "shared", "message"),
    [
        (
            "qwen3",
            0,
            "architecture 'qwen3' (Qwen3-MoE) is built from qwen3 models, not llama; meldkit "
            "builds mixtral (from llama, mistral), qwen (from llama, mistral, qwen2), qwen3 "
            "(from qwen3), deepseek (from llama, mistral)",
        ),
        (
            "qwen",
            0,
            "architecture 'qwen' (Qwen2-MoE) takes exactly 1 shared expert(s); the recipe has 0",
        ),
        (
            "mixtral",
            1,
            "architecture 'mixtral' (Mixtral) takes exactly 0 shared expert(s); the recipe has 1",
        ),
        ("phimoe", 0, "architecture 'phimoe' is not one of mixtral, qwen, qwen3, deepseek"),
    ],
)
def test_architecture_errors(family, arch: str, shared: int, message: str) -> None:
    base, fts = family("llama")
    recipe = moe_recipe(base, fts[:2], architecture=arch)
    recipe["shared_experts"] = [{"source_model": str(fts[2])}] * shared
    with pytest.raises(PlanError) as info:
        plan_moe(recipe)
    assert info.value.problems == [message]


def test_unsupported_family_names_the_supported_ones(family) -> None:
    base, fts = family("phi3")
    with pytest.raises(PlanError) as info:
        plan_moe(moe_recipe(base, fts[:2]))
    assert info.value.problems == [
        "no MoE architecture can be built from phi3 models with 0 shared expert(s); meldkit "
        "builds mixtral (from llama, mistral), qwen (from llama, mistral, qwen2), qwen3 (from "
        "qwen3), deepseek (from llama, mistral)"
    ]


def test_expert_of_another_size(family, tmp_path) -> None:
    from meldkit.testing import make_tiny_model

    base, fts = family("llama")
    wide = make_tiny_model(tmp_path / "wide", "llama", num_layers=2, intermediate=48)
    with pytest.raises(PlanError) as info:
        plan_moe(moe_recipe(base, [fts[0], wide]))
    assert info.value.problems[0] == (
        f"experts[1] ({wide}): 'model.layers.0.mlp.gate_proj.weight' has shape [48, 16], the "
        "base's [32, 16]"
    )


def test_planning_never_imports_torch(family) -> None:
    base, fts = family("llama")
    code = (
        "import sys; from meldkit.moe import plan_moe; "
        f"plan_moe({moe_recipe(base, fts[:2])!r}); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_dense_defaults_are_made_explicit() -> None:
    from meldkit.moe.architectures import OUTPUT_ARCHS, output_config

    old_llama = {"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 4}
    cfg = output_config(OUTPUT_ARCHS[0], old_llama, 4, 0, 2, "bfloat16")
    # Mixtral's own defaults (8 KV heads, rope_theta 1e6, eps 1e-5) would change the model
    assert (cfg["num_key_value_heads"], cfg["rope_theta"], cfg["rms_norm_eps"]) == (4, 1e4, 1e-6)
    assert (cfg["num_local_experts"], cfg["num_experts_per_tok"], cfg["dtype"]) == (
        4,
        2,
        "bfloat16",
    )
