"""The `meldkit` command end to end: exit codes, error text, output folder rules, imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from meldkit.cli.main import main
from meldkit.testing import read_model


def _recipe(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def _linear(a: Path, b: Path) -> str:
    return f"merge_method: linear\nmodels:\n  - model: {a}\n    parameters: {{weight: 0.25}}\n  - model: {b}\n    parameters: {{weight: 0.75}}\n"


def test_help_and_plan_do_not_import_torch(llama_family, tmp_path):
    base, (a, b) = llama_family
    recipe = _recipe(tmp_path, _linear(a, b))
    code = (
        "import sys\n"
        "from meldkit.cli.main import main\n"
        f"rc = main(['plan', {str(recipe)!r}])\n"
        "assert rc == 0, rc\n"
        "assert 'torch' not in sys.modules, 'plan imported torch'\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules\n"
        "print('NO-TORCH-OK')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "NO-TORCH-OK" in out.stdout
    assert "plan OK: nothing was computed" in out.stdout


def test_merge_writes_complete_folder_and_matches_formula(llama_family, tmp_path, capsys):
    base, (a, b) = llama_family
    recipe = _recipe(tmp_path, _linear(a, b))
    out = tmp_path / "out"
    assert (
        main(
            [
                "merge",
                str(recipe),
                str(out),
                "--out-shard-size",
                "20KB",
                "--random-seed",
                "1",
                "--lazy-unpickle",
                "--allow-crimes",
                "--quiet",
            ]
        )
        == 0
    )
    files = sorted(p.name for p in out.iterdir())
    shards = [f for f in files if f.startswith("model-")]
    assert len(shards) > 1 and all(f.endswith(f"-of-{len(shards):05d}.safetensors") for f in shards)
    for name in (
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
        "mergekit_config.yml",
        "model.safetensors.index.json",
    ):
        assert name in files
    assert (out / "mergekit_config.yml").read_text() == recipe.read_text()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    merged, x, y = read_model(out), read_model(a), read_model(b)
    assert set(index["weight_map"]) == set(merged) == set(x)
    for name in merged:
        expected = (0.25 * x[name] + 0.75 * y[name]) / 1.0
        assert (merged[name] - expected).abs().max() <= 1e-6 * max(1.0, float(expected.abs().max()))
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\ntags:\n- merge\n- meldkit\n---")
    assert not list(tmp_path.glob(".*meldkit-partial"))


def test_errors_are_one_or_two_lines_with_exit_code(llama_family, tmp_path, capsys):
    base, (a, b) = llama_family
    recipe = _recipe(tmp_path, f"merge_method: linaer\nmodels: [{a}]\n")
    assert main(["merge", str(recipe), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "error: unknown merge_method 'linaer'. Did you mean 'linear'?"
    assert err[1].startswith("hint: `meldkit methods` lists every method")
    assert len(err) == 2
    assert not (tmp_path / "o").exists()


def test_existing_output_needs_overwrite_and_inputs_are_never_targets(
    llama_family, tmp_path, capsys
):
    base, (a, b) = llama_family
    recipe = _recipe(tmp_path, _linear(a, b))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["merge", str(recipe), str(out), "--quiet"]) == 2
    assert "error: output folder" in capsys.readouterr().err
    assert (out / "keep.txt").exists()
    assert main(["merge", str(recipe), str(out), "--quiet", "--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()
    assert main(["merge", str(recipe), str(a / "sub"), "--overwrite"]) == 2
    assert f"is inside the input model folder {a}" in capsys.readouterr().err
    assert main(["merge", str(recipe), str(a.parent), "--overwrite"]) == 2
    assert "contains the input model folder" in capsys.readouterr().err


def test_python_dash_m_and_version():
    out = subprocess.run(
        [sys.executable, "-m", "meldkit", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("meldkit ")


def test_console_command_exit_code_output_and_omp_policy(llama_family, tmp_path):
    # `python -m meldkit` runs cli.main.run: main, then os._exit. Its exit code, everything it
    # printed and a complete output folder must still reach the caller, and torch's OpenMP
    # workers are told not to spin (unless the caller chose a policy).
    base, (a, b) = llama_family
    recipe = _recipe(tmp_path, _linear(a, b))
    out = tmp_path / "out"
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import os, runpy, sys\n"
        "import meldkit.cli.commands as c\n"
        "merge = c.cmd_merge\n"
        "def spy(args):\n"
        "    print('policy', os.environ.get('OMP_WAIT_POLICY'))\n"
        "    return merge(args)\n"
        "c.cmd_merge = spy\n"
        "sys.argv = ['meldkit'] + sys.argv[1:]\n"
        "runpy.run_module('meldkit', run_name='__main__')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    done = subprocess.run(
        [sys.executable, str(probe), "merge", str(recipe), str(out)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert (
        "policy PASSIVE" in done.stdout
        and f"wrote 39 tensors in 1 shard(s) to {out}" in done.stdout
    )
    assert (out / "model.safetensors").exists() and not list(tmp_path.glob(".out.meldkit-partial*"))
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    again = subprocess.run(
        [sys.executable, str(probe), "merge", str(recipe), str(out), "--quiet"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert again.returncode == 2 and "policy ACTIVE" in again.stdout
    assert again.stderr.startswith("error: output folder")


@pytest.mark.parametrize("argv", [["merge", "--help"], ["plan", "--help"]])
def test_subcommand_help_mentions_compat(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "usage: meldkit" in text
    if argv[0] == "merge":
        assert "--allow-crimes" in text and "no effect" in text


def test_demo_makes_models_and_merges(tmp_path, capsys):
    assert main(["demo", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "method: ties" in out and "merged model written to" in out
    merged = tmp_path / "demo" / "merged"
    tensors = read_model(merged)
    base = read_model(tmp_path / "demo" / "models" / "base")
    assert set(tensors) == set(base)
    assert (merged / "model.safetensors.index.json").exists()
    assert json.loads((merged / "config.json").read_text())["torch_dtype"] == "bfloat16"
