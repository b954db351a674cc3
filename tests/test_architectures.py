"""Architecture inference on real tensor names, checked by loading merges in transformers."""

from __future__ import annotations

import pytest

from meldkit.api import run_merge
from meldkit.plan import plan_merge
from meldkit.testing import make_model_family, read_model

ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "phi3", "gpt2", "gpt_neox", "mixtral"]


@pytest.fixture(scope="module", params=ARCHS)
def family(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    base, fts = make_model_family(root, request.param, n=1, num_layers=3)
    return request.param, base, fts[0]


def _fused(tensors):
    """Per-expert Mixtral tensors in transformers 5's fused layout (what MergeKit 0.1.5 writes):
    gate_up_proj[e] = cat(w1_e, w3_e), down_proj[e] = w2_e, router renamed to mlp.gate."""
    import re

    import torch

    out, experts = {}, {}
    for name, t in tensors.items():
        m = re.match(
            r"(model\.layers\.\d+\.)block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight$", name
        )
        if m:
            experts.setdefault(m.group(1), {})[(int(m.group(2)), m.group(3))] = t
        elif name.endswith("block_sparse_moe.gate.weight"):
            out[name.replace("block_sparse_moe.gate.weight", "mlp.gate.weight")] = t
        else:
            out[name] = t
    for prefix, parts in experts.items():
        n = max(e for e, _ in parts) + 1
        out[f"{prefix}mlp.experts.gate_up_proj"] = torch.stack(
            [torch.cat([parts[(e, "w1")], parts[(e, "w3")]]) for e in range(n)]
        )
        out[f"{prefix}mlp.experts.down_proj"] = torch.stack([parts[(e, "w2")] for e in range(n)])
    return out


def _forward(folder):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3, 4]])).logits
    assert torch.isfinite(logits).all()
    return model


def test_layout_and_layer_count(family):
    arch, base, ft = family
    plan = plan_merge(
        f"merge_method: passthrough\nslices:\n  - sources: [{{model: {base}, layer_range: [0, 3]}}]\n"
    )
    layout = plan.models[str(base)].layout
    assert layout.num_layers == 3
    assert layout.config_layers == 3
    assert layout.input_embedding is not None
    stacked = {"gpt2": "transformer.h.", "gpt_neox": "gpt_neox.layers."}.get(arch, "model.layers.")
    assert layout.stack_prefix == stacked


def test_slerp_merge_loads_in_transformers(family, tmp_path):
    arch, base, ft = family
    out = tmp_path / "out"
    run_merge(
        f"merge_method: linear\nmodels:\n  - {{model: {base}, parameters: {{weight: 0.5}}}}\n  - {{model: {ft}, parameters: {{weight: 0.5}}}}\n",
        out,
        quiet=True,
    )
    merged, a, b = read_model(out), read_model(base), read_model(ft)
    if arch == "mixtral":
        a, b = _fused(a), _fused(b)
    assert set(merged) == set(a)
    for name in merged:
        if merged[name].is_floating_point():
            assert (
                merged[name].float() - (a[name].float() + b[name].float()) / 2
            ).abs().max() < 1e-5
    _forward(out)


def test_frankenmerge_updates_config_and_loads(family, tmp_path):
    arch, base, ft = family
    out = tmp_path / "stack"
    plan = run_merge(
        f"""
merge_method: passthrough
slices:
  - sources: [{{model: {base}, layer_range: [0, 2]}}]
  - sources: [{{model: {ft}, layer_range: [1, 3]}}]
""",
        out,
        quiet=True,
    )
    assert plan.output_layers == 4
    model = _forward(out)
    assert model.config.num_hidden_layers == 4
    merged, b = read_model(out), read_model(ft)
    if arch == "mixtral":
        b = _fused(b)
    prefix = plan.models[str(base)].layout.stack_prefix
    for name in merged:
        if name.startswith(f"{prefix}3."):
            assert (merged[name] == b[name.replace(f"{prefix}3.", f"{prefix}2.", 1)]).all()
