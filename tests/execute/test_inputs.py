"""Input formats end to end: sharded safetensors, pickled .bin (weights_only), mixed dtypes."""

from __future__ import annotations

import torch

from meldkit.api import run_merge
from meldkit.testing import make_tiny_model, read_model


def test_sharded_and_bin_inputs_merge_like_single_files(tmp_path):
    a = make_tiny_model(tmp_path / "a", "llama", seed=1, shard_size=4000)
    b = make_tiny_model(tmp_path / "b", "llama", seed=2, fmt="bin")
    assert len(list(a.glob("model-*.safetensors"))) > 1 and (b / "pytorch_model.bin").exists()
    run_merge(
        f"merge_method: linear\nmodels: [{{model: {a}, parameters: {{weight: 2}}}}, {{model: {b}, parameters: {{weight: 1}}}}]\n",
        tmp_path / "out",
        quiet=True,
    )
    out, x, y = read_model(tmp_path / "out"), read_model(a), read_model(b)
    for name in x:
        assert torch.allclose(out[name], (2 * x[name] + y[name]) / 3, atol=1e-6)


def test_dtype_and_out_dtype_casts(tmp_path):
    a = make_tiny_model(tmp_path / "a", "llama", seed=1, dtype="bfloat16")
    b = make_tiny_model(tmp_path / "b", "llama", seed=2, dtype="float16")
    recipe = f"merge_method: linear\nmodels: [{{model: {a}, parameters: {{weight: 1}}}}, {{model: {b}, parameters: {{weight: 1}}}}]\n"
    # bf16 + fp16 without `dtype` promote to fp32 (MergeKit's rule)
    run_merge(recipe, tmp_path / "promoted", quiet=True)
    out = read_model(tmp_path / "promoted")
    assert {t.dtype for t in out.values()} == {torch.float32}
    x, y = read_model(a), read_model(b)
    name = "model.layers.1.mlp.down_proj.weight"
    assert torch.allclose(out[name], (x[name].float() + y[name].float()) / 2)
    # dtype casts the inputs at load; out_dtype casts the result once
    run_merge(recipe + "dtype: float16\nout_dtype: bfloat16\n", tmp_path / "cast", quiet=True)
    cast = read_model(tmp_path / "cast")
    assert {t.dtype for t in cast.values()} == {torch.bfloat16}
    expected = ((x[name].half().float() + y[name].float()) / 2).bfloat16()
    assert torch.equal(cast[name], expected)
    import json

    assert json.loads((tmp_path / "cast" / "config.json").read_text())["torch_dtype"] == "bfloat16"
