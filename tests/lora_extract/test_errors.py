"""Every problem is found from the headers, before compute, with an exact message; the CLI
prints them as error/hint lines and exits 2."""

from __future__ import annotations

import pytest

from meldkit.cli.main import main
from meldkit.errors import PlanError
from meldkit.extract_lora import ExtractionOptions, extract_lora, plan_extraction
from meldkit.testing import make_tiny_model


def _problems(*args, **kw) -> list[str]:
    with pytest.raises(PlanError) as info:
        extract_lora(*args, **kw)
    return info.value.problems


def test_no_shared_tensors(tiny, tmp_path):
    base, _, _ = tiny
    other = make_tiny_model(tmp_path / "gpt2", "gpt2", with_tokenizer=False)
    assert _problems(base, other, tmp_path / "out") == [
        f"{other} and {base} share no tensor names: they are not the same architecture"
    ]


def test_shape_mismatch_lists_every_tensor(tiny, tmp_path):
    base, _, _ = tiny
    wider = make_tiny_model(
        tmp_path / "wide", "llama", num_layers=2, hidden=32, intermediate=40, vocab=64,
        tie_embeddings=False, with_tokenizer=False,
    )  # fmt: skip
    problems = _problems(base, wider, tmp_path / "out")
    assert len(problems) == 6  # up, gate and down in each of the two layers
    assert problems[0] == (
        "'model.layers.0.mlp.down_proj.weight' has shape [32, 40] in the fine-tune but "
        "[32, 48] in the base"
    )
    # excluding them makes the rest extractable
    plan = plan_extraction(
        str(base), str(wider), tmp_path / "out", ExtractionOptions(exclude=("mlp",))
    )
    assert {m.module for m in plan.modules if "mlp" in m.module} == set()


def test_bad_regex_and_conflicting_rules_reported_together(tiny, tmp_path):
    base, tuned, _ = tiny
    problems = _problems(
        base, tuned, tmp_path / "out", energy=0.9, max_error=0.1, include=["("], rank=0
    )
    assert problems == [
        "--energy and --max-error are two rank rules; give one of them (--rank may cap either)",
        "--rank must be a positive integer, got 0",
        "--include '(' is not a valid regular expression "
        "(missing ), unterminated subpattern at position 0)",
    ]


def test_save_module_and_selection_that_match_nothing(tiny, tmp_path):
    base, tuned, _ = tiny
    assert _problems(base, tuned, tmp_path / "out", save_modules=["nope"]) == [
        "--save-module 'nope' matches no module of the fine-tune"
    ]
    assert _problems(base, tuned, tmp_path / "out", include=["^nothing$"]) == [
        "no module is left to extract (every module is left out)"
    ]


def test_occupied_output_is_refused_before_compute(tiny, tmp_path):
    base, tuned, _ = tiny
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert _problems(base, tuned, out) == [f"output folder {out} already exists and is not empty"]
    assert (out / "keep.txt").read_text() == "mine"


def test_cli_runs_and_reports(tiny, tmp_path, capsys):
    base, _, low = tiny
    out = tmp_path / "out"
    code = main(
        ["extract-lora", "--base", str(base), "--model", str(low), str(out), "--max-error", "0.01"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "model.layers.0.self_attn.q_proj" in printed and f"wrote {out}" in printed
    assert "rank 1-3" in printed
    assert "--max-error 0.01" in (out / "README.md").read_text()
    # MergeKit's spellings
    code = main(
        ["extract-lora", "--base-model", str(base), "--model", str(low), "--out-path",
         str(tmp_path / "mk"), "--max-rank", "2", "-e", "mlp", "--quiet", "--allow-crimes",
         "--lora-merge-cache", str(tmp_path / "cache")]
    )  # fmt: skip
    assert code == 0
    assert capsys.readouterr().out.startswith("adapter ")


def test_cli_error_lines(tiny, tmp_path, capsys):
    base, tuned, _ = tiny
    code = main(
        ["extract-lora", "--base", str(base), "--model", str(tuned), str(tmp_path / "o"),
         "--energy", "1.5"]
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "error: --energy must be in (0, 1], got 1.5",
        "hint: see `meldkit extract-lora --help` for the options",
    ]
    assert not (tmp_path / "o").exists()


def test_missing_gpu_is_refused_before_anything_is_written(tiny, tmp_path):
    import torch

    from meldkit.errors import MeldError

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    base, tuned, _ = tiny
    with pytest.raises(MeldError) as info:
        extract_lora(base, tuned, tmp_path / "o", device="cuda")
    assert info.value.message == "device 'cuda' was asked for but no CUDA GPU is available"
    assert list(tmp_path.iterdir()) == []


def test_planning_and_the_cli_module_do_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys, meldkit.extract_lora, meldkit.extract_lora.cli\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
