"""Extraction results: exact reconstruction at full rank, ranks found by the energy rules, the
factor product against an independent numpy SVD, the report, card and adapter keys."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from meldkit.extract_lora import extract_lora
from meldkit.testing import make_tiny_model, read_model
from tests.lora_extract.conftest import known_rank

PREFIX = "base_model.model."


def _adapter(folder: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _reconstruct(base: Path, adapter: Path) -> dict[str, torch.Tensor]:
    """base + B @ A for every LoRA module, saved tensors replacing the base's (scale 1)."""
    weights, tensors = read_model(base), _adapter(adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["lora_alpha"] == cfg["r"] and cfg["alpha_pattern"] == cfg["rank_pattern"]
    for key, value in tensors.items():
        name = key[len(PREFIX) :]
        if name.endswith(".lora_A.weight"):
            module = name[: -len(".lora_A.weight")]
            b = tensors[f"{PREFIX}{module}.lora_B.weight"]
            weights[module + ".weight"] = weights[module + ".weight"] + b @ value
        elif not name.endswith(".lora_B.weight"):
            weights[name.replace(".base_layer.", ".")] = value
    return weights


def test_full_rank_reproduces_the_finetune(tiny, tmp_path):
    base, tuned, _ = tiny
    report = extract_lora(base, tuned, tmp_path / "a", rank=1000)
    expected, got = read_model(tuned), _reconstruct(base, tmp_path / "a")
    assert set(got) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, atol=2e-6, rtol=1e-5)
    assert report.worst is not None and report.worst.error < 1e-5
    # rank = min(out, in) for every module: the full SVD
    for m in report.decomposed:
        assert m.rank == min(m.shape) and m.method == "full"


@pytest.mark.parametrize("rule", [{"energy": 0.999}, {"max_error": 0.01}])
def test_energy_rules_find_the_known_rank(tiny, tmp_path, rule):
    base, _, low = tiny
    report = extract_lora(base, low, tmp_path / "a", **rule)
    linear = [m for m in report.modules if m.handling == "lora"]
    assert len(linear) == 14
    for m in linear:
        assert m.rank == known_rank(m.module + ".weight"), m.module
        assert m.error < 1e-5 and m.energy > 0.99999
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert cfg["r"] == 3 and set(cfg["rank_pattern"].values()) == {1, 2}
    for module, r in cfg["rank_pattern"].items():
        assert r == known_rank(module + ".weight")
    # norms at full rank, through modules_to_save, under their own names
    assert "model.norm" in cfg["modules_to_save"]
    assert f"{PREFIX}model.norm.weight" in _adapter(tmp_path / "a")


def test_product_equals_numpy_truncated_svd(tiny, tmp_path):
    base, tuned, _ = tiny
    report = extract_lora(base, tuned, tmp_path / "a", rank=5)
    tensors, b_w, m_w = _adapter(tmp_path / "a"), read_model(base), read_model(tuned)
    for m in report.decomposed:
        delta = (m_w[m.module + ".weight"].double() - b_w[m.module + ".weight"].double()).numpy()
        u, s, vt = np.linalg.svd(delta, full_matrices=False)
        want = (u[:, :5] * s[:5]) @ vt[:5]
        a = tensors[f"{PREFIX}{m.module}.lora_A.weight"].double().numpy()
        b = tensors[f"{PREFIX}{m.module}.lora_B.weight"].double().numpy()
        assert a.shape == (5, delta.shape[1]) and b.shape == (delta.shape[0], 5)
        np.testing.assert_allclose(b @ a, want, atol=1e-5 * np.abs(delta).max())
        # distribute_scale: A and B carry sqrt(S) each, so their row/column norms agree
        np.testing.assert_allclose(np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=0), rtol=1e-4)
        # the reported error is ||delta - BA|| / ||delta||, the tail of the spectrum
        tail = np.sqrt((s[5:] ** 2).sum() / (s**2).sum())
        assert m.error == pytest.approx(tail, rel=1e-3)
        assert m.energy == pytest.approx(1 - tail**2, rel=1e-4)


def test_report_card_and_config(tiny, tmp_path):
    base, tuned, _ = tiny
    out = tmp_path / "a"
    report = extract_lora(base, tuned, out, rank=4, exclude=[r"layers\.1\.mlp"], command="cmd x")
    data = json.loads((out / "extraction_report.json").read_text())
    assert data["summary"]["lora_modules"] == 11  # 14 linear layers, 3 left out
    assert {e["module"] for e in data["left_out"]} == {
        f"model.layers.1.mlp.{p}" for p in ("down_proj", "gate_proj", "up_proj")
    }
    errors = [m["error"] for m in data["modules"] if m["handling"] == "lora"]
    assert data["summary"]["mean_error"] == pytest.approx(sum(errors) / len(errors))
    assert data["summary"]["worst_error"] == pytest.approx(max(errors))
    assert data["summary"]["adapter_bytes"] == report.adapter_bytes
    size = (out / "adapter_model.safetensors").stat().st_size
    assert report.adapter_bytes < size < report.adapter_bytes + 20_000
    cfg = json.loads((out / "adapter_config.json").read_text())
    # short names would also adapt the left-out layer-1 MLPs: full names instead
    assert "model.layers.0.mlp.up_proj" in cfg["target_modules"]
    assert "model.layers.1.mlp.up_proj" not in cfg["target_modules"]
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM"
    assert cfg["base_model_name_or_path"] == str(base)
    card = (out / "README.md").read_text()
    assert "cmd x" in card and str(tuned) in card and "resize_token_embeddings" not in card
    q = next(m for m in report.decomposed if m.module == "model.layers.0.self_attn.q_proj")
    assert f"| `{q.module}` | 4 | {q.energy:.4f} | {q.error:.3e} |" in card
    assert not list(tmp_path.glob(".*meldkit*"))  # no temporary folder or lock left


def test_grown_vocabulary_is_saved_full_and_reported(tiny, tmp_path):
    base, _, _ = tiny
    grown = make_tiny_model(tmp_path / "grown", base=base, seed=5, added_tokens=["<a>", "<b>"])
    report = extract_lora(base, grown, tmp_path / "a", rank=2, embed_lora=True)
    assert report.vocab == (64, 66)
    assert any("--embed-lora is turned off" in w for w in report.warnings)
    saved = _adapter(tmp_path / "a")
    assert saved[f"{PREFIX}model.embed_tokens.weight"].shape == (66, 32)
    assert saved[f"{PREFIX}lm_head.weight"].shape == (66, 32)
    assert "model.resize_token_embeddings(66)" in (tmp_path / "a" / "README.md").read_text()


def test_embed_lora_stores_transposed_embedding_factors(tiny, tmp_path):
    base, tuned, _ = tiny
    extract_lora(base, tuned, tmp_path / "a", rank=32, embed_lora=True)
    saved = _adapter(tmp_path / "a")
    a = saved[f"{PREFIX}model.embed_tokens.lora_embedding_A"]
    b = saved[f"{PREFIX}model.embed_tokens.lora_embedding_B"]
    assert a.shape == (32, 64) and b.shape == (32, 32)  # (r, vocab), (hidden, r)
    delta = (
        read_model(tuned)["model.embed_tokens.weight"]
        - read_model(base)["model.embed_tokens.weight"]
    )
    torch.testing.assert_close((b @ a).T, delta, atol=1e-5, rtol=1e-4)
    assert f"{PREFIX}lm_head.lora_A.weight" in saved  # the head as a linear LoRA


def test_same_seed_same_bytes(tiny, tmp_path):
    base, tuned, _ = tiny
    for name in ("a", "b"):
        extract_lora(base, tuned, tmp_path / name, energy=0.5)
    first = (tmp_path / "a" / "adapter_model.safetensors").read_bytes()
    assert first == (tmp_path / "b" / "adapter_model.safetensors").read_bytes()


def test_lora_reference_as_the_finetune(tiny, tmp_path):
    """`--model base+adapter`: extracting a rank-3 adapter back gives the same product."""
    base, _, low = tiny
    extract_lora(base, low, tmp_path / "a", rank=3)
    extract_lora(base, f"{base}+{tmp_path / 'a'}", tmp_path / "b", rank=3)
    first, again = _reconstruct(base, tmp_path / "a"), _reconstruct(base, tmp_path / "b")
    for name, value in first.items():
        torch.testing.assert_close(again[name], value, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("tied_side", ["base", "finetune"])
def test_one_side_tied(tmp_path, tied_side):
    """A head on one side only: the tied side's embedding stands in for it."""
    kw = dict(num_layers=1, hidden=16, vocab=32, dtype="float32", with_tokenizer=False)
    untied = make_tiny_model(tmp_path / "untied", "llama", tie_embeddings=False, **kw)
    tied = make_tiny_model(tmp_path / "tied", "llama", tie_embeddings=True, seed=1, **kw)
    base, tuned = (tied, untied) if tied_side == "base" else (untied, tied)
    extract_lora(base, tuned, tmp_path / "a", rank=2)
    saved, t, b = _adapter(tmp_path / "a"), read_model(tuned), read_model(base)
    head = t.get("lm_head.weight", t["model.embed_tokens.weight"])
    torch.testing.assert_close(saved[f"{PREFIX}lm_head.weight"], head, atol=0, rtol=0)
    assert f"{PREFIX}model.embed_tokens.weight" in saved
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert {"lm_head", "model.embed_tokens"} <= set(cfg["modules_to_save"])
    assert cfg["ensure_weight_tying"] is False  # the head is saved under its own name
    assert b["model.embed_tokens.weight"].shape == head.shape
