"""The adapter loads in PEFT, and merge_and_unload reproduces the fine-tune to the error the
report gives for each module."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from meldkit.extract_lora import extract_lora
from meldkit.testing import make_model_family, read_model

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


def _merged(base: Path, adapter: Path) -> dict[str, torch.Tensor]:
    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = peft.PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return {k: v.detach() for k, v in merged.state_dict().items()}


def test_peft_loads_and_merges_to_the_reported_error(tiny, tmp_path):
    base, tuned, _ = tiny
    report = extract_lora(base, tuned, tmp_path / "a", rank=3)
    merged, want, before = _merged(base, tmp_path / "a"), read_model(tuned), read_model(base)
    assert set(want) <= set(merged)
    lora = {m.module + ".weight": m for m in report.decomposed}
    assert len(lora) == 14
    for name, value in want.items():
        if name in lora:
            # the relative error of the merged weight is the one reported for its module
            delta = value - before[name]
            measured = float((merged[name] - value).norm() / delta.norm())
            assert measured == pytest.approx(lora[name].error, rel=1e-3), name
        else:  # norms, embeddings and head: saved whole
            torch.testing.assert_close(merged[name], value, atol=0, rtol=0)
    assert 0.1 < report.worst.error < 1.0  # rank 3 of a full-rank delta loses a lot


@pytest.mark.parametrize("embed_lora", [False, True])
def test_peft_tied_embeddings(tmp_path, embed_lora):
    base, (tuned,) = make_model_family(
        tmp_path / "fam", "llama", n=1, tie_embeddings=True, dtype="float32"
    )
    report = extract_lora(base, tuned, tmp_path / "a", rank=64, embed_lora=embed_lora)
    merged, want = _merged(base, tmp_path / "a"), read_model(tuned)
    embed = "model.embed_tokens.weight"
    for name, value in want.items():
        torch.testing.assert_close(merged[name], value, atol=1e-5, rtol=1e-5)
    # the head stays tied to the new embedding
    torch.testing.assert_close(merged["lm_head.weight"], want[embed], atol=1e-5, rtol=1e-5)
    assert report.worst.error < 1e-5


def test_peft_biases_of_decomposed_layers(tmp_path):
    """Qwen2's q/k/v biases: saved whole beside the LoRA (bias: all), restored exactly."""
    base, (tuned,) = make_model_family(tmp_path / "fam", "qwen2", n=1, dtype="float32")
    report = extract_lora(base, tuned, tmp_path / "a", rank=2)
    assert sum(m.saved_bias for m in report.modules) == 6  # q, k, v in two layers
    merged, want = _merged(base, tmp_path / "a"), read_model(tuned)
    for name, value in want.items():
        if name.endswith(".bias"):
            torch.testing.assert_close(merged[name], value, atol=0, rtol=0)


def test_peft_gpt2_conv1d_layers(tmp_path):
    """GPT-2 stores its layers (in, out) (Conv1D): told from the biases, fan_in_fan_out is set
    and each delta is factored transposed, as PEFT expects."""
    base, (tuned,) = make_model_family(tmp_path / "fam", "gpt2", n=1, dtype="float32")
    report = extract_lora(base, tuned, tmp_path / "a", rank=64)
    assert report.decomposed and report.worst.error < 1e-5
    merged, want = _merged(base, tmp_path / "a"), read_model(tuned)
    checked = [n for n in want if n in merged and n.endswith(("c_attn.weight", "c_fc.weight"))]
    assert len(checked) == 4  # two layers
    for name, value in want.items():
        if name in merged:
            torch.testing.assert_close(merged[name], value, atol=1e-5, rtol=1e-5)
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert cfg["fan_in_fan_out"] is True
