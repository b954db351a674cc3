"""`model+lora` references applied on the fly equal peft's merge_and_unload, end to end."""

from __future__ import annotations

import torch

from meldkit.api import run_merge
from meldkit.testing import make_tiny_model, read_model


def test_lora_reference_matches_peft(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = make_tiny_model(tmp_path / "base", "llama", seed=4)
    model = AutoModelForCausalLM.from_pretrained(base)
    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "v_proj", "down_proj"],
            rank_pattern={"down_proj": 2},
        ),
    )
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    peft_model.save_pretrained(tmp_path / "adapter")
    expected = {k: v for k, v in peft_model.merge_and_unload().state_dict().items()}

    run_merge(
        f"merge_method: passthrough\nmodels:\n  - model: {base}+{tmp_path / 'adapter'}\n",
        tmp_path / "out",
        quiet=True,
    )
    merged = read_model(tmp_path / "out")
    original = read_model(base)
    changed = 0
    for name, tensor in merged.items():
        assert torch.allclose(tensor, expected[name], atol=1e-5), name
        changed += not torch.equal(tensor, original[name])
    assert changed == 3 * 2  # q, v and down projections of both layers
