"""`meldkit make-test-models DIR`: tiny models to try recipes on, and nothing else left behind."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from meldkit.cli.main import main
from meldkit.testing import make_model_family

SMALL = ["--layers", "2", "--hidden", "16", "--vocab", "32"]


def _run(capsys, *argv: object) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _digest(folder: Path) -> dict[str, str]:
    return {
        f.name: hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(folder.iterdir())
        if f.is_file()
    }


def _printed_recipe(out: str) -> str:
    body = out.split("a recipe to try (save it as recipe.yaml):\n\n", 1)[1]
    return body.split("\nthen: ", 1)[0]


def test_writes_a_family_and_a_recipe_that_plans(tmp_path, capsys) -> None:
    d = tmp_path / "models"
    code, out, err = _run(capsys, "make-test-models", d, "--n", "2", *SMALL)
    assert (code, err) == (0, "")
    assert sorted(os.listdir(d)) == ["base", "ft1", "ft2"]  # no temporary folder left
    lines = out.splitlines()
    assert lines[0] == (
        f"wrote a tiny llama base and 2 fine-tunes (2 layers, hidden 16, vocab 32, bfloat16, "
        f"seed 0) to {d}:"
    )
    assert [line.split("  (")[0] for line in lines[1:4]] == [
        f"  {d / n}" for n in ("base", "ft1", "ft2")
    ]
    assert (
        lines[-1] == "then: meldkit plan recipe.yaml --params && meldkit merge recipe.yaml merged"
    )
    for name in ("base", "ft1", "ft2"):
        files = set(os.listdir(d / name))
        assert {
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
        } <= files
        assert json.loads((d / name / "config.json").read_text())["dtype"] == "bfloat16"
    assert _digest(d / "ft1") != _digest(d / "ft2")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(_printed_recipe(out))
    assert recipe.read_text().startswith(f"merge_method: ties\nbase_model: {d / 'base'}\n")
    code, out, err = _run(capsys, "plan", recipe, "--params")
    assert code == 0, err
    assert "plan OK: nothing was computed" in out
    assert "density[ft1] = 0.9 0.5" in out  # the printed gradient reaches the plan


def test_same_options_give_the_same_bytes_as_the_library(tmp_path, capsys) -> None:
    d = tmp_path / "cli"
    assert (
        _run(
            capsys, "make-test-models", d, "--n", "1", "--seed", "3", "--dtype", "float32", *SMALL
        )[0]
        == 0
    )
    make_model_family(
        tmp_path / "lib",
        "llama",
        n=1,
        num_layers=2,
        hidden=16,
        intermediate=32,
        vocab=32,
        dtype="float32",
        seed=3,
    )
    for name in ("base", "ft1"):
        assert _digest(d / name) == _digest(tmp_path / "lib" / name)


def test_one_fine_tune_gets_a_slerp_recipe(tmp_path, capsys) -> None:
    d = tmp_path / "m"
    code, out, _ = _run(capsys, "make-test-models", d, "--n", "1", "--arch", "qwen2", *SMALL)
    assert code == 0
    assert out.splitlines()[0].startswith("wrote a tiny qwen2 base and 1 fine-tune (")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(_printed_recipe(out))
    assert recipe.read_text().startswith("merge_method: slerp\n")
    code, out, err = _run(capsys, "plan", recipe)
    assert code == 0, err


def test_existing_models_need_overwrite(tmp_path, capsys) -> None:
    d = tmp_path / "m"
    assert _run(capsys, "make-test-models", d, *SMALL)[0] == 0
    before = {n: _digest(d / n) for n in ("base", "ft1", "ft2")}
    code, out, err = _run(capsys, "make-test-models", d, "--seed", "5", *SMALL)
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"error: {d / 'base'} already exists and is not empty",
        "hint: choose another DIR, or pass --overwrite to replace base/ and ft1/ ... there",
    ]
    assert {n: _digest(d / n) for n in ("base", "ft1", "ft2")} == before
    assert sorted(os.listdir(d)) == ["base", "ft1", "ft2"]
    code, _, err = _run(capsys, "make-test-models", d, "--seed", "5", "--overwrite", *SMALL)
    assert (code, err) == (0, "")
    assert _digest(d / "base") != before["base"]
    assert sorted(os.listdir(d)) == ["base", "ft1", "ft2"]


def test_overwrite_never_replaces_a_folder_that_is_not_a_model(tmp_path, capsys) -> None:
    d = tmp_path / "m"
    (d / "ft1").mkdir(parents=True)
    (d / "ft1" / "notes.txt").write_text("mine")
    code, out, err = _run(capsys, "make-test-models", d, "--overwrite", *SMALL)
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"error: {d / 'ft1'} is not a model folder (it has no config.json), so --overwrite "
        "does not replace it",
        "hint: choose another DIR, or move that folder away",
    ]
    assert sorted(os.listdir(d)) == ["ft1"] and os.listdir(d / "ft1") == ["notes.txt"]


def test_an_empty_target_folder_is_used(tmp_path, capsys) -> None:
    d = tmp_path / "m"
    (d / "base").mkdir(parents=True)
    assert _run(capsys, "make-test-models", d, *SMALL)[0] == 0
    assert (d / "base" / "config.json").is_file()


@pytest.mark.parametrize(
    ("argv", "message", "hint"),
    [
        (["--n", "0"], "--n 0 is too small (the smallest is 1)", "give --n 1 or more"),
        (
            ["--layers", "0"],
            "--layers 0 is too small (the smallest is 1)",
            "give --layers 1 or more",
        ),
        (["--vocab", "2"], "--vocab 2 is too small (the smallest is 3)", "give --vocab 3 or more"),
        (["--seed", "-1"], "--seed -1 is too small (the smallest is 0)", "give --seed 0 or more"),
        (
            ["--dtype", "bfloat61"],
            "unknown --dtype 'bfloat61'. Did you mean 'bfloat16', 'float16' or 'float32'?",
            "use bfloat16, float16 or float32",
        ),
        (
            ["--arch", "lama"],
            "unknown --arch 'lama'. Did you mean 'llama'?",
            "choose one of gemma2, gpt2, gpt_neox, llama, mistral, mixtral, phi3, qwen2, qwen3",
        ),
        (
            ["--hidden", "30"],
            "cannot make llama models of these sizes: hidden (30) must be divisible by heads (4)",
            "--hidden must be a multiple of 4 (the tiny models have 4 attention heads)",
        ),
        (
            ["--hidden", "4096", "--layers", "64", "--vocab", "32000"],
            "these sizes make 59.56 GB of test models (at most 4.00 GB)",
            "lower --layers, --hidden, --vocab or --n; test models are meant to be tiny",
        ),
    ],
)
def test_bad_options_are_refused_before_writing(tmp_path, capsys, argv, message, hint) -> None:
    d = tmp_path / "m"
    code, out, err = _run(capsys, "make-test-models", d, *argv)
    assert (code, out) == (2, "")
    assert err.splitlines() == [f"error: {message}", f"hint: {hint}"]
    assert not d.exists()


def test_dir_that_is_a_file(tmp_path, capsys) -> None:
    f = tmp_path / "f"
    f.write_text("x")
    code, _, err = _run(capsys, "make-test-models", f, *SMALL)
    assert code == 2
    assert err.splitlines() == [
        f"error: {f} is a file, not a folder",
        "hint: choose a folder for DIR",
    ]
    assert f.read_text() == "x"


def test_interrupted_run_leaves_nothing(tmp_path, capsys, monkeypatch) -> None:
    import meldkit.testing

    def stop(root, *args, **kwargs):
        make_model_family(root, "llama", n=1, num_layers=1, hidden=16, vocab=32)  # half done
        raise KeyboardInterrupt

    monkeypatch.setattr(meldkit.testing, "make_model_family", stop)
    d = tmp_path / "new" / "m"
    code, out, err = _run(capsys, "make-test-models", d, *SMALL)
    assert (code, out, err) == (130, "", "error: interrupted\n")
    assert not (tmp_path / "new").exists()  # the folders it created are gone again
    kept = tmp_path / "kept"
    (kept / "other.txt").parent.mkdir()
    (kept / "other.txt").write_text("x")
    assert _run(capsys, "make-test-models", kept, *SMALL)[0] == 130
    assert os.listdir(kept) == ["other.txt"]


def _spawn(d: Path, *extra: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "meldkit", "make-test-models", str(d), *SMALL, *extra]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_runs_at_once_into_one_folder(tmp_path) -> None:
    d = tmp_path / "m"
    runs = [_spawn(d), _spawn(d)]
    results = [(p.wait(), p.stderr.read() if p.stderr else "") for p in runs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert loser.startswith("error: ") and "already exists and is not empty" in loser
    assert sorted(os.listdir(d)) == ["base", "ft1", "ft2"]


def test_two_overwriting_runs_at_once_never_mix_their_models(tmp_path) -> None:
    make_model_family(
        tmp_path / "s1",
        "llama",
        n=2,
        num_layers=2,
        hidden=16,
        intermediate=32,
        vocab=32,
        dtype="bfloat16",
        seed=1,
    )
    make_model_family(
        tmp_path / "s2",
        "llama",
        n=2,
        num_layers=2,
        hidden=16,
        intermediate=32,
        vocab=32,
        dtype="bfloat16",
        seed=2,
    )
    d = tmp_path / "m"
    runs = [_spawn(d, "--overwrite", "--seed", "1"), _spawn(d, "--overwrite", "--seed", "2")]
    results = [(p.wait(), p.stderr.read() if p.stderr else "") for p in runs]
    assert [code for code, _ in results] == [0, 0], results
    assert sorted(os.listdir(d)) == ["base", "ft1", "ft2"]
    got = {n: _digest(d / n) for n in ("base", "ft1", "ft2")}
    assert got in [
        {n: _digest(tmp_path / s / n) for n in ("base", "ft1", "ft2")} for s in ("s1", "s2")
    ]
