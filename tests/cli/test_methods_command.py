"""`meldkit methods NAME [--json]`: one method in full, without importing torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from meldkit.cli.main import main
from meldkit.config import load_config
from meldkit.methods import list_methods

ALL = [spec.name for spec in list_methods()]


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_ties_in_full(capsys) -> None:
    code, out, err = _run(capsys, "methods", "ties")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "ties (TIES)"
    assert (
        lines[1]
        == "  Keeps the largest task-vector entries, elects a sign, averages the agreeing ones."
    )
    assert "formula (meldkit.methods.task_vectors):" in lines
    # The family's table shrinks to its header and this member's row.
    assert "  | ties | magnitude | yes | true | false |" in lines
    assert not any(line.startswith("  | dare_ties |") for line in lines)
    assert (
        "      δ_i  <- sparsify(δ_i, density_i [, gamma_i | epsilon_i])   # L1-rescaled if `rescale`"
        in lines
    )
    density = next(line for line in lines if line.startswith("    density "))
    assert density.split()[:4] == ["density", "per_non_base", "float", "default"]
    assert "1.0, 0..1" in density and "fraction of the task vector kept" in density
    weight = next(line for line in lines if line.startswith("    weight "))
    assert weight.split()[:4] == ["weight", "per_non_base", "float", "required"]
    assert "  base model: required" in lines
    assert "  input models: >= 1 (the base counts as one)" in lines
    assert "  a tensor some inputs lack: an error (every input must have every tensor)" in lines
    assert "  random: no" in lines
    assert "paper: https://arxiv.org/abs/2306.01708" in lines
    assert (
        "CPU fast path: yes (meldkit.kernels.task_vectors:ties); MELDKIT_REFERENCE_MATH=1 runs "
        "the reference formula instead"
    ) in lines
    example = out.split("example recipe:\n", 1)[1]
    assert yaml.safe_load(example)["merge_method"] == "ties"
    assert "```" not in out and ":data:" not in out and "``" not in out


def test_linear_and_random_methods(capsys) -> None:
    _, out, _ = _run(capsys, "methods", "linear")
    assert "  base model: ignored (a given base is one more input)" in out.splitlines()
    assert "CPU fast path: no (the reference formula runs everywhere)" in out.splitlines()
    assert "out = sum_i w_i x_i / sum_i w_i" in out
    _, out, _ = _run(capsys, "methods", "dare_ties")
    assert "  random: yes (the same --random-seed gives the same bytes; default 0)" in out
    assert "  | dare_ties | random | yes | false | true |" in out.splitlines()
    _, out, _ = _run(capsys, "methods", "model_stock")
    assert (
        "  a tensor some inputs lack: in fewer than 3 inputs: copied when only the base has it, "
        "else skipped with a warning"
    ) in out.splitlines()
    assert "  models besides the base: >= 2" in out.splitlines()


def test_name_is_forgiving_about_case_and_dashes(capsys) -> None:
    assert _run(capsys, "methods", "TIES")[1].startswith("ties (TIES)\n")
    assert _run(capsys, "methods", "task-arithmetic")[1].startswith("task_arithmetic (")


def test_unknown_name_suggests_the_closest(capsys) -> None:
    code, out, err = _run(capsys, "methods", "tiess")
    assert (code, out) == (2, "")
    lines = err.splitlines()
    assert lines == [
        "error: unknown method 'tiess'. Did you mean 'ties'?",
        "hint: `meldkit methods` lists every method: " + ", ".join(ALL),
    ]
    code, _, err = _run(capsys, "methods", "frobnicate")
    assert code == 2 and err.splitlines()[0] == "error: unknown method 'frobnicate'."


@pytest.mark.parametrize("name", ALL)
def test_json_of_every_method(name, capsys) -> None:
    code, out, err = _run(capsys, "methods", name, "--json")
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert data["name"] == name
    assert data["formula"].strip() and "```" not in data["formula"]
    spec = next(s for s in list_methods() if s.name == name)
    assert [p["name"] for p in data["params"]] == [p.name for p in spec.params]
    # The example is a recipe of this very method that meldkit accepts.
    config = load_config(data["example"])
    assert config.merge_method == name
    assert data["impl"].startswith("meldkit.methods.")
    # Every MergeKit method but linear and passthrough has a fast path; the methods beyond
    # MergeKit (tsv, iso_c, ...) are reference-only so far (their cost is the factorisations).
    reference_only = {"linear", "passthrough", "tsv", "iso_c", "iso_cts", "wudi", "pcb", "magmax"}
    assert (data["fast_impl"] is None) == (name in reference_only | {"consensus"})


def test_methods_never_imports_torch() -> None:
    code = (
        "import sys, io, contextlib\n"
        "from meldkit.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['methods', 'ties']) == 0\n"
        "    assert main(['methods', 'della', '--json']) == 0\n"
        "    assert main(['methods']) == 0\n"
        "assert 'torch' not in sys.modules, 'methods imported torch'\n"
        "print('NO-TORCH-OK')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "NO-TORCH-OK\n"
