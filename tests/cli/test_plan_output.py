"""`meldkit plan --params` and `--json`, the plan's repr and the public summary printer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import meldkit
from meldkit.cli.main import main
from meldkit.io.sizes import format_size
from meldkit.plan import plan_merge
from meldkit.plan.summary import describe_parameters, describe_plan


def _run(capsys, *argv: object) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _recipe(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def _params_section(out: str) -> list[str]:
    """The lines of the --params table (after the summary, before "plan OK")."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("resolved parameters ("))
    return lines[start : lines.index("plan OK: nothing was computed")]


@pytest.fixture
def slerp_recipe(llama_family, tmp_path) -> Path:
    base, (a, _) = llama_family
    return _recipe(
        tmp_path,
        f"merge_method: slerp\nbase_model: {base}\nmodels: [{{model: {base}}}, {{model: {a}}}]\n"
        "parameters:\n"
        "  t: [{filter: self_attn, value: [0, 1]}, {filter: down_proj, value: 0.2}, {value: 0.5}]\n",
    )


def test_params_shows_gradients_per_layer_and_filters_per_kind(
    llama_family, slerp_recipe, capsys
) -> None:
    base, (a, _) = llama_family
    code, out, err = _run(capsys, "plan", slerp_recipe, "--params")
    assert (code, err) == (0, "")
    assert _params_section(out) == [
        "resolved parameters (slerp; one value per layer where they differ):",
        f"  base = {base}",
        f"  ft1 = {a}",
        "  model.embed_tokens.weight, lm_head.weight, model.norm.weight: t=0.5",
        "  model.layers.0-3 input_layernorm.weight, mlp.gate_proj.weight, mlp.up_proj.weight, "
        "post_attention_layernorm.weight:",
        "    t=0.5",
        "  model.layers.0-3 mlp.down_proj.weight: t=0.2",
        "  model.layers.0-3 self_attn.*:",
        "    t = 0 0.3333 0.6667 1",
    ]


def test_params_shows_each_models_weight_and_density(llama_family, tmp_path, capsys) -> None:
    base, (a, b) = llama_family
    recipe = _recipe(
        tmp_path,
        f"merge_method: ties\nbase_model: {base}\nmodels:\n"
        f"  - model: {a}\n    parameters: {{weight: 0.6, density: [0.9, 0.5]}}\n"
        f"  - model: {b}\n    parameters: {{weight: 0.4, density: 0.7}}\n",
    )
    code, out, _ = _run(capsys, "plan", recipe, "--params")
    assert code == 0
    section = _params_section(out)
    i = section.index("  model.layers.0-3 all tensors:")
    assert section[i + 1 :] == [
        "    density[ft1] = 0.9 0.7667 0.6333 0.5",
        "    int8_mask=false normalize=true rescale=false lambda=1 weight[ft1]=0.6 weight[ft2]=0.4",
        "    density[ft2]=0.7",
    ]
    assert all(len(line) <= 100 for line in section[4:])


def test_a_long_gradient_lists_every_layer_wrapped(tmp_path, capsys) -> None:
    from meldkit.config.params import layer_depth
    from meldkit.plan.summary import format_value
    from meldkit.testing import make_model_family

    base, (a,) = make_model_family(tmp_path / "m", "llama", n=1, num_layers=40)
    recipe = _recipe(
        tmp_path,
        f"merge_method: slerp\nbase_model: {base}\nmodels: [{{model: {base}}}, {{model: {a}}}]\n"
        "parameters: {t: [0, 1]}\n",
    )
    code, out, _ = _run(capsys, "plan", recipe, "--params")
    assert code == 0
    section = _params_section(out)
    i = section.index("  model.layers.0-39 all tensors:")
    assert section[i + 1].startswith("    t = 0 0.02564 0.05128 ")
    values = " ".join(line.strip() for line in section[i + 1 :]).removeprefix("t = ").split()
    assert values == [format_value(layer_depth(j, 40)) for j in range(40)]
    assert all(len(line) <= 100 for line in section[i:])


def test_params_splits_slices_into_runs_of_layers(llama_family, tmp_path, capsys) -> None:
    base, (a, b) = llama_family
    recipe = _recipe(
        tmp_path,
        "merge_method: passthrough\nslices:\n"
        f"  - sources: [{{model: {a}, layer_range: [0, 2]}}]\n"
        f"  - sources: [{{model: {b}, layer_range: [2, 4], parameters: {{scale: 0.5}}}}]\n",
    )
    code, out, _ = _run(capsys, "plan", recipe, "--params")
    assert code == 0
    section = _params_section(out)
    assert "  model.layers.0-1 all tensors: scale[ft1]=unset" in section
    assert "  model.layers.2-3 all tensors: scale[ft2]=0.5" in section


def test_model_labels_fall_back_to_the_key_when_names_clash(tmp_path, capsys) -> None:
    from meldkit.testing import make_model_family

    base, (a,) = make_model_family(tmp_path / "x", "llama", n=1, num_layers=1)
    other, _ = make_model_family(tmp_path / "y", "llama", n=0, num_layers=1)
    recipe = _recipe(
        tmp_path,
        f"merge_method: linear\nmodels:\n  - model: {base}\n    parameters: {{weight: 1}}\n"
        f"  - model: {other}\n    parameters: {{weight: 3}}\n",
    )
    code, out, _ = _run(capsys, "plan", recipe, "--params")
    assert code == 0
    section = _params_section(out)
    assert section[0] == "resolved parameters (linear; one value per layer where they differ):"
    i = section.index("  model.layers.0 all tensors:")  # too long for one line: wrapped
    assert section[i + 1 :] == [f"    normalize=true weight[{base}]=1", f"    weight[{other}]=3"]


def test_json_is_the_whole_plan(llama_family, tmp_path, capsys) -> None:
    base, (a, b) = llama_family
    recipe = _recipe(
        tmp_path,
        f"merge_method: linear\nmodels:\n  - model: {a}\n    parameters: {{weight: 0.25}}\n"
        f"  - model: {b}\n    parameters: {{weight: 0.75}}\n",
    )
    code, out, err = _run(capsys, "plan", recipe, "--json", "--out-shard-size", "20KB")
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert json.dumps(data, indent=2) + "\n" == out  # nothing but the JSON on stdout
    plan = plan_merge(recipe, out_shard_size=20_000)
    assert data == json.loads(json.dumps(plan.to_dict()))
    assert list(data) == [
        "format_version",
        "method",
        "base_model",
        "donor",
        "dtype",
        "out_dtype",
        "inputs",
        "output",
        "tensors",
        "warnings",
    ]
    assert data["method"] == "linear" and data["warnings"] == []
    assert [i["model"] for i in data["inputs"]] == [str(a), str(b)]
    assert data["output"]["tensors"] == len(data["tensors"]) == 39
    assert data["output"]["bytes_to_write"] == plan.bytes_to_write
    shards = data["output"]["shards"]
    assert len(shards) > 1 and sum(len(s["tensors"]) for s in shards) == 39
    q = next(t for t in data["tensors"] if t["name"] == "model.layers.1.self_attn.q_proj.weight")
    assert q["shape"] == [16, 16] and q["dtype"] == "F32" and q["method"] == "linear"
    assert q["parameters"] == {"normalize": True}
    assert [(s["model"], s["tensor"], s["base"], s["parameters"]) for s in q["sources"]] == [
        (str(a), "model.layers.1.self_attn.q_proj.weight", False, {"weight": 0.25}),
        (str(b), "model.layers.1.self_attn.q_proj.weight", False, {"weight": 0.75}),
    ]
    # Stable: the same plan prints the same text.
    assert _run(capsys, "plan", recipe, "--json", "--out-shard-size", "20KB")[1] == out


def test_json_keeps_warnings_and_errors_off_stdout(llama_family, tmp_path, capsys) -> None:
    base, (a, b) = llama_family
    recipe = _recipe(
        tmp_path,
        f"merge_method: linear\nmodels:\n  - model: {a}\n    parameters: {{weight: 1, densty: 1}}\n",
    )
    code, out, err = _run(capsys, "plan", recipe, "--json")
    assert code == 0
    data = json.loads(out)
    assert len(data["warnings"]) == 1 and "densty" in data["warnings"][0]
    assert err == f"warning: {data['warnings'][0]}\n"
    bad = _recipe(tmp_path, f"merge_method: linaer\nmodels: [{a}]\n")
    code, out, err = _run(capsys, "plan", bad, "--json")
    assert (code, out) == (2, "")
    assert err.splitlines()[0] == "error: unknown merge_method 'linaer'. Did you mean 'linear'?"


def test_plan_repr_is_one_short_line(slerp_recipe) -> None:
    plan = plan_merge(slerp_recipe)
    size = format_size(plan.bytes_to_write)
    assert repr(plan) == f"<MergePlan slerp: 39 tensors from 2 models, 1 shard, {size} to write>"
    assert str(plan) == repr(plan)
    assert repr(plan.tensors[0]) == (
        "TensorPlan('model.embed_tokens.weight', shape=[64, 16], dtype=F32, 2 sources)"
    )


def test_describe_plan_is_public(slerp_recipe) -> None:
    plan = plan_merge(slerp_recipe)
    assert meldkit.describe_plan is describe_plan
    text = describe_plan(plan)
    assert text.splitlines()[0] == "method: slerp"
    assert "estimated peak memory: " in text
    assert describe_plan(plan, list_tensors=True).count("\n  model.layers.") == 36
    assert describe_parameters(plan).splitlines()[0].startswith("resolved parameters (slerp;")


def test_plan_params_and_json_do_not_import_torch(slerp_recipe) -> None:
    code = (
        "import sys, io, contextlib\n"
        "from meldkit.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    assert main(['plan', {str(slerp_recipe)!r}, '--params', '--tensors']) == 0\n"
        f"    assert main(['plan', {str(slerp_recipe)!r}, '--json']) == 0\n"
        "assert 'torch' not in sys.modules, 'plan imported torch'\n"
        "print('NO-TORCH-OK')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "NO-TORCH-OK\n"
