"""Building MoE models: every output loads in transformers; experts equal their sources."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from meldkit.moe import MoeOptions, plan_moe
from meldkit.moe.build import BuildOptions, build_moe, expert_noise, partial_path
from meldkit.testing import read_model
from tests.moe.conftest import moe_recipe

transformers = pytest.importorskip("transformers")


def _build(recipe: dict[str, Any], out: Path, layout: str = "auto", **kw: Any) -> Path:
    plan = plan_moe(recipe, MoeOptions(expert_layout=layout))  # type: ignore[arg-type]
    return build_moe(plan, out, BuildOptions(quiet=True, **kw))


def _load_and_generate(folder: Path) -> Any:
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        folder, output_loading_info=True, trust_remote_code=False
    )
    assert not any(info.values()), info  # no missing, unexpected or mismatched tensor
    out = model.generate(torch.tensor([[1, 5, 9]]), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 6)
    return model


@pytest.mark.parametrize(
    ("arch_in", "arch_out", "layout", "cls"),
    [
        ("llama", "mixtral", "fused", "MixtralForCausalLM"),
        ("mistral", "mixtral", "per-expert", "MixtralForCausalLM"),
        ("llama", "qwen", "fused", "Qwen2MoeForCausalLM"),
        ("qwen2", "qwen", "auto", "Qwen2MoeForCausalLM"),
        ("qwen3", "qwen3", "auto", "Qwen3MoeForCausalLM"),
    ],
)
def test_output_loads_in_transformers(family, tmp_path, arch_in, arch_out, layout, cls) -> None:
    base, fts = family(arch_in)
    recipe = moe_recipe(base, fts[:2], architecture=arch_out)
    if arch_out == "qwen":
        recipe["shared_experts"] = [{"source_model": str(fts[2]), "positive_prompts": ["all"]}]
    out = _build(recipe, tmp_path / "moe", layout)
    model = _load_and_generate(out)
    assert type(model).__name__ == cls
    names = sorted(p.name for p in out.iterdir())
    assert {"config.json", "README.md", "mergekit_moe_config.yml", "tokenizer.json"} <= set(names)
    # the base's tokenizer, byte for byte (MergeKit rewrites it with pad = BOS, left padding)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        assert (out / f).read_bytes() == (base / f).read_bytes()
    # attention and embeddings are the base's
    got, want = read_model(out), read_model(base)
    for name in ("model.embed_tokens.weight", "model.layers.1.self_attn.o_proj.weight"):
        assert torch.equal(got[name], want[name])


def test_fused_experts_equal_their_sources(family, tmp_path) -> None:
    base, fts = family("llama")
    out = _build(moe_recipe(base, fts[:3]), tmp_path / "moe")
    got = read_model(out)
    for e, ft in enumerate(fts[:3]):
        src = read_model(ft)
        for layer in (0, 1):
            at = f"model.layers.{layer}.mlp."
            gate_up = torch.cat([src[at + "gate_proj.weight"], src[at + "up_proj.weight"]])
            assert torch.equal(got[at + "experts.gate_up_proj"][e], gate_up)
            assert torch.equal(got[at + "experts.down_proj"][e], src[at + "down_proj.weight"])


def test_noise_and_residual_scale(family, tmp_path) -> None:
    base, fts = family("llama")
    recipe = moe_recipe(base, fts[:2])
    recipe["experts"][1].update(noise_scale=0.5, residual_scale=0.25)
    fused = read_model(_build(recipe, tmp_path / "fused", seed=7))
    per = read_model(_build(recipe, tmp_path / "per", "per-expert", seed=7))
    src = read_model(fts[1])
    at = "model.layers.1."
    for proj, w in (("gate_proj", "w1"), ("up_proj", "w3"), ("down_proj", "w2")):
        s = src[f"{at}mlp.{proj}.weight"]
        noisy = s + expert_noise(tuple(s.shape), 7, 1, 1, proj) * 0.5
        want = noisy * 0.25 if proj == "down_proj" else noisy
        assert torch.allclose(per[f"{at}block_sparse_moe.experts.1.{w}.weight"], want, atol=1e-6)
        added = (noisy - s) / 0.5
        assert abs(float(added.std()) - 1.0) < 0.2 and abs(float(added.mean())) < 0.2
    # the same noise in both layouts; expert 0 has none
    gate_up = torch.cat(
        [
            per[f"{at}block_sparse_moe.experts.1.w1.weight"],
            per[f"{at}block_sparse_moe.experts.1.w3.weight"],
        ]
    )
    assert torch.equal(fused[f"{at}mlp.experts.gate_up_proj"][1], gate_up)
    assert torch.equal(
        fused[f"{at}mlp.experts.down_proj"][0], read_model(fts[0])[f"{at}mlp.down_proj.weight"]
    )


def test_seeded_random_gates(family, tmp_path) -> None:
    base, fts = family("llama")
    router = "model.layers.0.mlp.gate.weight"
    runs = {}
    for name, mode, seed in (
        ("a", "random", 3),
        ("b", "random", 3),
        ("c", "random", 4),
        ("u", "uniform_random", 3),
    ):
        out = _build(moe_recipe(base, fts[:2], gate_mode=mode), tmp_path / name, seed=seed)
        runs[name] = load_file(str(out / "model.safetensors"))[router]
    assert torch.equal(runs["a"], runs["b"])
    assert not torch.equal(runs["a"], runs["c"])
    gen = torch.Generator().manual_seed(3)
    assert torch.equal(runs["a"], torch.randn((2, 2, 16), generator=gen)[0])
    bound = 1 / 16**0.5
    assert float(runs["u"].abs().max()) <= bound and float(runs["u"].std()) > bound / 4


def _embedding_direction(base: Path, prompts: list[str]) -> torch.Tensor:
    """Independently: tokenize BOS + prompt with tokenizers, sum embedding rows, normalise."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(base / "tokenizer.json"))
    embed = read_model(base)["model.embed_tokens.weight"].double()
    total = torch.zeros(embed.shape[1], dtype=torch.float64)
    for p in prompts:
        ids = tok.encode("<s>" + p, add_special_tokens=False).ids
        total += embed[ids].sum(0)
    return total / total.norm()


def test_cheap_embed_rows(family, tmp_path) -> None:
    base, fts = family("llama")
    recipe = moe_recipe(base, fts[:2], gate_mode="cheap_embed")
    # the tiny tokenizer's words are tok_3 ... tok_63
    recipe["experts"][0]["positive_prompts"] = ["tok_5 tok_9", "tok_7"]
    recipe["experts"][1].update(positive_prompts=["tok_20 tok_21"], negative_prompts=["tok_30"])
    out = _build(recipe, tmp_path / "moe")
    got = load_file(str(out / "model.safetensors"))
    row0 = _embedding_direction(base, ["tok_5 tok_9", "tok_7"])
    diff = _embedding_direction(base, ["tok_20 tok_21"]) - _embedding_direction(base, ["tok_30"])
    for layer in (0, 1):
        router = got[f"model.layers.{layer}.mlp.gate.weight"].double()
        assert torch.allclose(router[0], row0, atol=1e-6)
        assert torch.allclose(router[1], diff / diff.norm(), atol=1e-6)


def test_interrupted_build_resumes(family, tmp_path, monkeypatch) -> None:
    from meldkit.moe import build

    base, fts = family("llama")
    recipe = moe_recipe(base, fts[:3])
    plan = plan_moe(recipe, MoeOptions(out_shard_size=4000))
    assert len(plan.shards) > 3
    clean = build_moe(plan, tmp_path / "clean", BuildOptions(quiet=True))
    calls = {"n": 0}
    real = build._TensorMaker.write

    def stop_later(self: Any, tensor: Any, writer: Any) -> None:
        calls["n"] += 1
        if calls["n"] == len(plan.tensors) // 2:
            raise KeyboardInterrupt
        real(self, tensor, writer)

    out = tmp_path / "moe"
    monkeypatch.setattr(build._TensorMaker, "write", stop_later)
    with pytest.raises(KeyboardInterrupt):
        build_moe(plan, out, BuildOptions(quiet=True, resume=True))
    assert not out.exists() and partial_path(out).is_dir()
    monkeypatch.setattr(build._TensorMaker, "write", real)
    notes: list[str] = []
    build_moe(plan, out, BuildOptions(quiet=True, resume=True), on_info=notes.append)
    assert notes and notes[0].startswith("resuming: ") and not notes[0].startswith("resuming: 0")
    assert not partial_path(out).exists()
    for f in sorted(clean.glob("*.safetensors")):
        assert (out / f.name).read_bytes() == f.read_bytes()


def test_failed_build_leaves_nothing(family, tmp_path, monkeypatch) -> None:
    from meldkit.moe import build

    base, fts = family("llama")
    plan = plan_moe(moe_recipe(base, fts[:2]))

    def fail(self: Any, tensor: Any, writer: Any) -> None:
        raise OSError(28, "No space left on device", str(tmp_path / "x"))

    monkeypatch.setattr(build._TensorMaker, "write", fail)
    out = tmp_path / "moe"
    with pytest.raises(Exception) as info:
        build_moe(plan, out, BuildOptions(quiet=True))
    assert str(info.value).startswith(f"disk full while writing {tmp_path / 'x'}")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_lora_expert_is_applied(family, tmp_path) -> None:
    import json

    from safetensors.torch import save_file

    base, fts = family("llama")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["up_proj"]}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    gen = torch.Generator().manual_seed(0)
    lora = {}
    for layer in (0, 1):
        at = f"base_model.model.model.layers.{layer}.mlp.up_proj."
        lora[at + "lora_A.weight"] = torch.randn((2, 16), generator=gen)
        lora[at + "lora_B.weight"] = torch.randn((32, 2), generator=gen)
    save_file(lora, str(adapter / "adapter_model.safetensors"))
    recipe = moe_recipe(base, fts[:2])
    recipe["experts"][1]["source_model"] = f"{fts[1]}+{adapter}"
    got = read_model(_build(recipe, tmp_path / "moe"))
    src = read_model(fts[1])
    for layer in (0, 1):
        at = f"base_model.model.model.layers.{layer}.mlp.up_proj."
        delta = 2.0 * lora[at + "lora_B.weight"] @ lora[at + "lora_A.weight"]  # alpha / r = 2
        want = src[f"model.layers.{layer}.mlp.up_proj.weight"] + delta
        fused = got[f"model.layers.{layer}.mlp.experts.gate_up_proj"][1]
        assert torch.allclose(fused[32:], want, atol=1e-5)
        assert torch.equal(fused[:32], src[f"model.layers.{layer}.mlp.gate_proj.weight"])


def test_run_moe_api(family, tmp_path) -> None:
    from meldkit.moe import run_moe

    base, fts = family("llama")
    warnings: list[str] = []
    recipe = moe_recipe(base, fts[:3], gate_mode="random")
    out = run_moe(recipe, tmp_path / "moe", on_warning=warnings.append, seed=5)
    assert warnings[0].startswith("3 experts is not a power of two")
    assert (out / "model.safetensors").is_file()
