"""``meldkit moe`` and ``meldkit plan`` on MoE recipes, end to end through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from meldkit.cli.main import main
from meldkit.testing import read_model
from tests.moe.conftest import moe_recipe, write_recipe


def _cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, list[str], str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.err.splitlines(), captured.out


def test_moe_builds_and_reports(family, tmp_path, capsys) -> None:
    base, fts = family("llama")
    recipe = write_recipe(tmp_path, moe_recipe(base, fts[:3], gate_mode="uniform_random"))
    out = tmp_path / "moe"
    code, err, stdout = _cli(capsys, "moe", recipe, out, "--seed", "1")
    assert code == 0, err
    assert err == [
        "warning: 3 experts is not a power of two; llama.cpp and some other loaders expect one"
    ]
    assert stdout == f"wrote Mixtral with 3 experts: 21 tensors in 1 shard(s) to {out}\n"
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["model_type"], cfg["num_local_experts"], cfg["num_experts_per_tok"]) == (
        "mixtral",
        3,
        2,
    )
    card = (out / "README.md").read_text()
    assert f"- **expert 2**: `{fts[2]}`" in card and "    - `write story`" in card
    assert (out / "mergekit_moe_config.yml").read_text() == recipe.read_text()


def test_plan_shows_a_moe_recipe(family, tmp_path, capsys) -> None:
    base, fts = family("llama")
    recipe = write_recipe(tmp_path, moe_recipe(base, fts[:2]))
    code, err, stdout = _cli(capsys, "plan", recipe)
    assert (code, err) == (0, [])
    lines = stdout.splitlines()
    assert lines[0] == "tool: moe (Mixtral, model_type mixtral, fused experts)"
    assert lines[1] == f"base: {base} (2 layers, hidden 16)"
    assert lines[2] == "router: gate_mode random, 2 expert(s) per token"
    assert lines[4] == f"  - expert 0: {fts[0]} (1 positive / 0 negative prompts)"
    assert lines[-1] == "plan OK: nothing was computed"
    assert any(line.startswith("peak tensor memory: about ") for line in lines)
    assert not (tmp_path / "out").exists()
    code, err, stdout = _cli(capsys, "plan", recipe, "--json")
    doc = json.loads(stdout)
    assert (doc["architecture"], doc["expert_layout"], doc["config"]["num_local_experts"]) == (
        "mixtral",
        "fused",
        2,
    )
    fused = {t["name"]: t for t in doc["tensors"]}["model.layers.0.mlp.experts.down_proj"]
    assert fused["sources"] == [
        [str(fts[0]), "model.layers.0.mlp.down_proj.weight"],
        [str(fts[1]), "model.layers.0.mlp.down_proj.weight"],
    ]
    assert doc["bytes"]["written"] == sum(s["file_size"] for s in doc["shards"])


def test_errors_are_reported_not_raised(family, tmp_path, capsys) -> None:
    base, fts = family("llama")
    recipe = write_recipe(tmp_path, moe_recipe(base, [fts[0], fts[0]], experts_per_token=0))
    code, err, stdout = _cli(capsys, "moe", recipe, tmp_path / "out")
    assert (code, stdout) == (2, "")
    assert err[0] == "error: experts_per_token is 0; it must be at least 1 (and 1 more problem)"
    code, err, stdout = _cli(capsys, "moe", recipe, tmp_path / "out", "-v")
    assert err == [
        "error: 2 problems found while planning:",
        "  - experts_per_token is 0; it must be at least 1",
        f"  - every expert is the same model ({fts[0]}); the experts would be identical copies "
        "(pass --i-understand-this-is-not-useful-without-training to build it anyway)",
        "hint: fix the recipe or the models it names; `meldkit plan` shows every problem at once",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]


def test_identical_experts_flag(family, tmp_path, capsys) -> None:
    base, fts = family("llama")
    recipe = write_recipe(tmp_path, moe_recipe(base, [fts[0], fts[0]]))
    flag = "--i-understand-this-is-not-useful-without-training"
    code, err, _ = _cli(capsys, "moe", recipe, tmp_path / "out", flag, "--quiet")
    assert code == 0, err
    got, src = read_model(tmp_path / "out"), read_model(fts[0])
    up = got["model.layers.0.mlp.experts.gate_up_proj"]
    assert torch.equal(up[0], up[1])
    assert torch.equal(up[0][32:], src["model.layers.0.mlp.up_proj.weight"])


def test_merge_points_at_moe(family, tmp_path, capsys) -> None:
    base, fts = family("llama")
    recipe = write_recipe(tmp_path, moe_recipe(base, fts[:2]))
    code, err, _ = _cli(capsys, "merge", recipe, tmp_path / "out")
    assert code == 2
    assert err[1].startswith("hint: build it with `meldkit moe RECIPE OUT`")


def test_deepseek_layout(family, tmp_path, capsys) -> None:
    base, fts = family("llama")
    data = moe_recipe(base, fts[:2], architecture="deepseek")
    data["shared_experts"] = [{"source_model": str(fts[2])}]
    recipe = write_recipe(tmp_path, data)
    code, err, _ = _cli(capsys, "moe", recipe, tmp_path / "out", "--quiet")
    assert code == 0
    assert err == [
        "warning: DeepSeek-MoE is not in transformers: loading the output needs the remote code "
        "of deepseek-ai/deepseek-moe-16b-base (trust_remote_code=True); meldkit never runs it"
    ]
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["architectures"] == ["DeepseekForCausalLM"]
    assert (cfg["n_routed_experts"], cfg["n_shared_experts"], cfg["first_k_dense_replace"]) == (
        2,
        1,
        0,
    )
    got, shared = read_model(tmp_path / "out"), read_model(fts[2])
    name = "model.layers.1.mlp.shared_experts.down_proj.weight"
    assert torch.equal(got[name], shared["model.layers.1.mlp.down_proj.weight"])
    assert got["model.layers.1.mlp.experts.1.gate_proj.weight"].shape == (32, 16)


def test_hidden_router_rows_come_from_the_base(family, tmp_path, capsys) -> None:
    pytest.importorskip("transformers")
    hidden_states = pytest.importorskip("meldkit.moe.hidden_states")
    base, fts = family("llama")
    data = moe_recipe(base, fts[:2], gate_mode="hidden_avg")
    data["experts"][1]["negative_prompts"] = ["tok_9"]
    recipe = write_recipe(tmp_path, data)
    code, err, _ = _cli(capsys, "moe", recipe, tmp_path / "out", "--quiet")
    assert code == 0, err
    want = hidden_states.prompt_hidden_states(
        str(base), [["write code"], ["write math"]], [[], ["tok_9"]], "hidden_avg"
    )
    got = read_model(Path(tmp_path / "out"))
    for layer in (0, 1):
        assert torch.allclose(got[f"model.layers.{layer}.mlp.gate.weight"], want[layer], atol=1e-6)
    code, err, _ = _cli(capsys, "moe", recipe, tmp_path / "lbl", "--quiet", "--layer-by-layer")
    assert code == 0, err
    lbl = read_model(tmp_path / "lbl")
    for layer in (0, 1):
        router = f"model.layers.{layer}.mlp.gate.weight"
        assert torch.allclose(lbl[router], got[router], atol=1e-5)
