"""LoraAdapter.apply reproduces PEFT's merge_and_unload tensor by tensor (atol 1e-5)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from meldkit.errors import InputError
from meldkit.io.header import TensorInfo
from meldkit.io.lora import LoraAdapter, pattern_value
from meldkit.io.lora_check import check_adapter

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")


def _tiny_llama() -> Any:
    cfg = transformers.LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(cfg)


def _tiny_gpt2() -> Any:
    cfg = transformers.GPT2Config(
        vocab_size=64,
        n_embd=16,
        n_layer=2,
        n_head=2,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(cfg)


def _randomise_adapter(model: Any) -> None:
    """PEFT initialises B (or the embedding A) to zero; make every adapter tensor non-zero."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if (
                "lora_" in name
                or "modules_to_save" in name
                or (".bias" in name and param.requires_grad)
            ):
                param.copy_(torch.randn_like(param) * 0.2)


def _merge_case(
    tmp_path: Path, make_model: Any, safe: bool = True, **lora_kwargs: Any
) -> tuple[dict, dict, Path]:
    torch.manual_seed(0)
    model = make_model()
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    peft_model = peft.get_peft_model(model, peft.LoraConfig(**lora_kwargs))
    _randomise_adapter(peft_model)
    folder = tmp_path / "adapter"
    peft_model.save_pretrained(str(folder), safe_serialization=safe)
    merged = {k: v.detach().clone() for k, v in peft_model.merge_and_unload().state_dict().items()}
    return base, merged, folder


def _infos(state: dict[str, torch.Tensor]) -> dict[str, TensorInfo]:
    """Header entries with the tensors' shapes (all the plan-time check reads)."""
    return {k: TensorInfo(k, "F32", tuple(v.shape), Path("x"), 0, 0) for k, v in state.items()}


def _check_parity(base: dict, merged: dict, folder: Path) -> set[str]:
    # The plan-time check accepts every adapter PEFT itself merges, without a warning.
    assert check_adapter(folder, folder, _infos(base)) == []
    adapter = LoraAdapter.open(folder)
    assert adapter.bind(base) == []
    affected = adapter.affected(base)
    changed = set()
    for name, tensor in base.items():
        ours = adapter.apply(name, tensor)
        assert ours.dtype == tensor.dtype
        torch.testing.assert_close(ours, merged[name], atol=1e-5, rtol=0, msg=name)
        if not torch.equal(ours, tensor):
            changed.add(name)
            assert name in affected, name
        if name not in affected:
            assert ours is tensor
    return affected


def test_llama_patterns_embedding_modules_to_save(tmp_path: Path) -> None:
    base, merged, folder = _merge_case(
        tmp_path,
        _tiny_llama,
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "down_proj", "embed_tokens"],
        rank_pattern={"v_proj": 2},
        alpha_pattern={r"layers\.1\.mlp\.down_proj": 32},
        modules_to_save=["lm_head"],
    )
    affected = _check_parity(base, merged, folder)
    assert "lm_head.weight" in affected
    assert "model.embed_tokens.weight" in affected
    assert "model.layers.0.self_attn.v_proj.weight" in affected
    assert "model.layers.0.self_attn.k_proj.weight" not in affected
    adapter = LoraAdapter.open(folder)
    v = adapter.modules["model.layers.0.self_attn.v_proj.weight"]
    assert (v.rank, v.scale) == (2, 4.0)
    assert adapter.modules["model.layers.1.mlp.down_proj.weight"].scale == 8.0
    assert adapter.modules["model.layers.0.mlp.down_proj.weight"].scale == 2.0


def test_llama_rslora_bin(tmp_path: Path) -> None:
    base, merged, folder = _merge_case(
        tmp_path, _tiny_llama, safe=False, r=4, lora_alpha=8, use_rslora=True,
        target_modules=["q_proj", "o_proj", "gate_proj"],
    )  # fmt: skip
    assert (folder / "adapter_model.bin").is_file()
    _check_parity(base, merged, folder)
    adapter = LoraAdapter.open(folder)
    assert adapter.modules["model.layers.0.self_attn.q_proj.weight"].scale == pytest.approx(
        8 / math.sqrt(4)
    )


def test_gpt2_fan_in_fan_out_and_biases(tmp_path: Path) -> None:
    base, merged, folder = _merge_case(
        tmp_path, _tiny_gpt2, r=4, lora_alpha=8, fan_in_fan_out=True, lora_bias=True,
        bias="lora_only", target_modules=["c_attn", "c_proj"],
    )  # fmt: skip
    affected = _check_parity(base, merged, folder)
    assert "transformer.h.0.attn.c_attn.bias" in affected
    assert "transformer.h.0.mlp.c_fc.weight" not in affected


def test_bind_strips_missing_prefix(tmp_path: Path) -> None:
    # GPT-2 hub checkpoints name tensors without the `transformer.` prefix PEFT uses.
    base, merged, folder = _merge_case(
        tmp_path, _tiny_gpt2, r=2, lora_alpha=4, fan_in_fan_out=True, target_modules=["c_attn"]
    )
    short = {k.removeprefix("transformer."): v for k, v in base.items()}
    adapter = LoraAdapter.open(folder)
    assert adapter.bind(short) == []
    assert "h.0.attn.c_attn.weight" in adapter.affected(short)
    out = adapter.apply("h.1.attn.c_attn.weight", short["h.1.attn.c_attn.weight"])
    torch.testing.assert_close(out, merged["transformer.h.1.attn.c_attn.weight"], atol=1e-5, rtol=0)


def test_wrong_fan_in_fan_out_is_a_plan_time_error(tmp_path: Path) -> None:
    base, _, folder = _merge_case(
        tmp_path, _tiny_gpt2, r=2, lora_alpha=4, fan_in_fan_out=True, target_modules=["c_attn"]
    )
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "fan_in_fan_out": False}))
    with pytest.raises(InputError) as err:
        check_adapter(folder, folder, _infos(base))
    key = "base_model.model.transformer.h.0.attn.c_attn"
    assert err.value.message == (
        f"{folder / 'adapter_model.safetensors'}: LoRA for 'transformer.h.0.attn.c_attn.weight' "
        f"has shape [48, 16] ('{key}.lora_A.weight' [2, 16] and '{key}.lora_B.weight' [48, 2]), "
        "the base tensor [16, 48]"
    )
    assert err.value.hint == (
        "the adapter was trained for a different base model; pair it with that model "
        "(or fan_in_fan_out is wrong)"
    )


def test_pickled_adapter_is_checked_too(tmp_path: Path) -> None:
    base, _, folder = _merge_case(
        tmp_path, _tiny_llama, safe=False, r=4, lora_alpha=8, target_modules=["q_proj"]
    )
    wrong = {k: (v[:, :8] if k.endswith("q_proj.weight") else v) for k, v in base.items()}
    with pytest.raises(InputError, match=r"adapter_model.bin: LoRA for 'model.layers.0"):
        check_adapter(folder, folder, _infos(wrong))


def test_bf16_cast_back(tmp_path: Path) -> None:
    base, merged, folder = _merge_case(
        tmp_path, _tiny_llama, r=4, lora_alpha=8, target_modules=["q_proj"]
    )
    name = "model.layers.0.self_attn.q_proj.weight"
    adapter = LoraAdapter.open(folder)
    out = adapter.apply(name, base[name].to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), merged[name], atol=2e-2, rtol=2e-2)


def test_pattern_value_matches_dotted_suffix() -> None:
    patterns = {"v_proj": 2, r"layers\.1\.mlp\.down_proj": 8}
    assert pattern_value(patterns, "model.layers.0.self_attn.v_proj", 4) == 2
    assert pattern_value(patterns, "v_proj", 4) == 2
    assert pattern_value(patterns, "model.layers.0.self_attn.xv_proj", 4) == 4
    assert pattern_value(patterns, "model.layers.1.mlp.down_proj", 4) == 8
    assert pattern_value(patterns, "model.layers.11.mlp.down_proj", 4) == 4


def _write_adapter(folder: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder


def test_hand_written_adapter_formula(tmp_path: Path) -> None:
    a, b = torch.randn(2, 3), torch.randn(5, 2)
    folder = _write_adapter(
        tmp_path / "a",
        {"peft_type": "LORA", "r": 2, "lora_alpha": 6},
        {
            "base_model.model.x.proj.lora_A.default.weight": a,
            "base_model.model.x.proj.lora_B.default.weight": b,
        },
    )
    adapter = LoraAdapter.open(folder)
    w = torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(adapter.apply("x.proj.weight", w), w + 3.0 * (b @ a).double())
    assert adapter.apply("x.other.weight", w) is w


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a PEFT adapter"):
        LoraAdapter.open(tmp_path)
    dora = _write_adapter(
        tmp_path / "d", {"peft_type": "LORA", "r": 2, "use_dora": True}, {"x": torch.zeros(1)}
    )
    with pytest.raises(InputError, match="DoRA"):
        LoraAdapter.open(dora)
    other = _write_adapter(tmp_path / "o", {"peft_type": "IA3"}, {"x": torch.zeros(1)})
    with pytest.raises(InputError, match="IA3"):
        LoraAdapter.open(other)
    lonely = _write_adapter(
        tmp_path / "l",
        {"r": 2, "lora_alpha": 2},
        {"base_model.model.m.lora_A.weight": torch.zeros(2, 3)},
    )
    with pytest.raises(InputError, match="no matching lora_B"):
        LoraAdapter.open(lonely)
    shape = _write_adapter(
        tmp_path / "s",
        {"r": 2, "lora_alpha": 2},
        {
            "base_model.model.m.lora_A.weight": torch.zeros(2, 3),
            "base_model.model.m.lora_B.weight": torch.zeros(4, 2),
        },
    )
    with pytest.raises(InputError, match="different base model"):
        LoraAdapter.open(shape).apply("m.weight", torch.zeros(3, 4))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "adapter_config.json").write_text("{}")
    with pytest.raises(InputError, match="no adapter_model"):
        LoraAdapter.open(tmp_path / "empty")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_apply_matches_cpu(tmp_path: Path) -> None:
    base, merged, folder = _merge_case(
        tmp_path,
        _tiny_llama,
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "embed_tokens"],
        modules_to_save=["lm_head"],
    )
    adapter = LoraAdapter.open(folder)
    for name, tensor in base.items():
        out = adapter.apply(name, tensor.cuda())
        assert out.device.type == "cuda"
        torch.testing.assert_close(out.cpu(), merged[name], atol=1e-5, rtol=0, msg=name)
