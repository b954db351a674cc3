"""Per-expert MoE checkpoints are merged and written in the fused layout MergeKit 0.1.5 uses."""

from __future__ import annotations

import torch

from meldkit.api import run_merge
from meldkit.methods.registry import MergeContext, get_method, load_merge_function
from meldkit.plan import plan_merge
from meldkit.plan.moe import FusedExperts, fuse_expert_suffixes
from meldkit.testing import make_model_family, read_model


def test_fuse_expert_suffixes():
    layer = ["self_attn.q_proj.weight", "block_sparse_moe.gate.weight"]
    for e in range(2):
        layer += [
            f"block_sparse_moe.experts.{e}.w1.weight",
            f"block_sparse_moe.experts.{e}.w2.weight",
            f"block_sparse_moe.experts.{e}.w3.weight",
        ]
    items, renames = fuse_expert_suffixes(layer + ["input_layernorm.weight"])
    assert items == [
        "self_attn.q_proj.weight",
        "block_sparse_moe.gate.weight",
        FusedExperts(
            "mlp.experts.gate_up_proj",
            (
                ("block_sparse_moe.experts.0.w1.weight", "block_sparse_moe.experts.0.w3.weight"),
                ("block_sparse_moe.experts.1.w1.weight", "block_sparse_moe.experts.1.w3.weight"),
            ),
        ),
        FusedExperts(
            "mlp.experts.down_proj",
            (("block_sparse_moe.experts.0.w2.weight",), ("block_sparse_moe.experts.1.w2.weight",)),
        ),
        "input_layernorm.weight",
    ]
    assert renames == {"block_sparse_moe.gate.weight": "mlp.gate.weight"}
    # an incomplete expert is left per-expert
    items, renames = fuse_expert_suffixes(layer[:-1])
    assert items == layer[:-1] and renames == {}


def test_ties_selects_over_the_whole_fused_tensor(tmp_path):
    base, fts = make_model_family(tmp_path / "m", "mixtral", n=2, num_layers=2)
    recipe = f"merge_method: ties\nbase_model: {base}\nmodels:\n" + "".join(
        f"  - {{model: {m}, parameters: {{weight: 0.5, density: 0.3}}}}\n" for m in fts
    )
    plan = plan_merge(recipe)
    fused = {t.name: t for t in plan.tensors}["model.layers.1.mlp.experts.gate_up_proj"]
    assert fused.shape == (4, 64, 16) and len(fused.sources[0].parts) == 4
    run_merge(recipe, tmp_path / "out", quiet=True)
    merged = read_model(tmp_path / "out")
    assert "model.layers.1.block_sparse_moe.experts.0.w1.weight" not in merged
    assert "model.layers.1.mlp.gate.weight" in merged

    def fused_of(folder):
        t = read_model(folder)
        p = "model.layers.1.block_sparse_moe.experts"
        return torch.stack(
            [torch.cat([t[f"{p}.{e}.w1.weight"], t[f"{p}.{e}.w3.weight"]]) for e in range(4)]
        )

    inputs = [fused_of(fts[0]), fused_of(fts[1]), fused_of(base)]
    spec = get_method("ties")
    expected = load_merge_function(spec)(
        inputs,
        2,
        fused.shared,
        fused.per_input,
        MergeContext("model.layers.1.mlp.experts.gate_up_proj"),
    )
    assert torch.equal(merged["model.layers.1.mlp.experts.gate_up_proj"], expected)
