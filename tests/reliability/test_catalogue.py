"""The catalogue of user errors, end to end through the ``meldkit`` command.

One case per item of the reliability contract: each runs ``meldkit merge`` (in this process,
exactly as the console script does) and checks the exit code, the message text, that the
report is one or two lines with no traceback, and what is left on disk: no output folder, no
temporary folder, and input folders byte-for-byte unchanged.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from meldkit.testing import make_tiny_model
from tests.reliability.helpers import (
    Family,
    leftovers,
    linear_recipe,
    run_cli,
    snapshot,
    write_recipe,
)

# -- corrupting helpers ------------------------------------------------------------------------


def _rewrite_header(path: Path, edit: Callable[[dict], None]) -> None:
    """Apply ``edit`` to a safetensors header, keeping the data section as it is."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    edit(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])


def _model(tmp: Path, name: str, **kw: object) -> Path:
    return make_tiny_model(tmp / name, "llama", num_layers=4, seed=7, **kw)  # type: ignore[arg-type]


class _Payload:
    """A pickle that runs ``touch <marker>`` when unpickled by an unsafe loader."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


# -- cases ---------------------------------------------------------------------------------------


@dataclass
class Case:
    """``setup(tmp, family)`` writes what the case needs and returns the ``merge`` arguments
    after the recipe path (or the whole argv when it starts with ``merge``)."""

    id: str
    recipe: Callable[[Path, Family], str]
    code: int
    message: list[str]
    hint: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    setup_out: Callable[[Path], None] | None = None
    out_exists_after: bool = False


def _two(tmp: Path, f: Family) -> str:
    return linear_recipe(f.ft1, f.ft2)


def _with(tmp: Path, f: Family, name: str, make: Callable[[Path], None], **kw: object) -> str:
    model = _model(tmp, name, **kw)
    make(model)
    return linear_recipe(f.ft1, model)


def _truncate(m: Path) -> None:
    p = m / "model.safetensors"
    p.write_bytes(p.read_bytes()[:-100])


def _header_too_long(m: Path) -> None:
    p = m / "model.safetensors"
    p.write_bytes(struct.pack("<Q", 10**7) + p.read_bytes()[8:])


def _bad_json(m: Path) -> None:
    p = m / "model.safetensors"
    data = p.read_bytes()
    p.write_bytes(data[:8] + b'{"a"' + data[12:])


def _offsets_outside(m: Path) -> None:
    def edit(h: dict) -> None:
        h["model.norm.weight"]["data_offsets"] = [0, 10**9]

    _rewrite_header(m / "model.safetensors", edit)


def _dtype_shape_disagree(m: Path) -> None:
    def edit(h: dict) -> None:
        h["model.norm.weight"]["shape"] = [h["model.norm.weight"]["shape"][0] * 2]

    _rewrite_header(m / "model.safetensors", edit)


def _drop_tensor(m: Path) -> None:
    sd = load_file(m / "model.safetensors")
    del sd["model.layers.1.mlp.up_proj.weight"]
    save_file(sd, m / "model.safetensors", metadata={"format": "pt"})


def _no_weights(m: Path) -> None:
    (m / "model.safetensors").unlink()


CASES = [
    Case(
        "yaml-syntax",
        lambda t, f: f"merge_method: linear\nmodels:\n  - model: {f.ft1}\n   - b: [\n",
        2,
        ["invalid YAML at line 4"],
        ["indentation"],
    ),
    Case("empty-recipe", lambda t, f: "", 2, ["the recipe is empty"], ["merge_method"]),
    Case("comment-only-recipe", lambda t, f: "# nothing here\n", 2, ["the recipe is empty"]),
    Case(
        "unknown-method",
        lambda t, f: f"merge_method: linaer\nmodels: [{f.ft1}]\n",
        2,
        ["unknown merge_method 'linaer'. Did you mean 'linear'?"],
        ["meldkit methods"],
    ),
    Case(
        "missing-model-folder",
        lambda t, f: linear_recipe(f.ft1, t / "nope"),
        2,
        [f"model folder '{{tmp}}{os.sep}nope' does not exist"],
        ["path"],
    ),
    Case(
        "missing-weights",
        lambda t, f: _with(t, f, "noweights", _no_weights),
        2,
        ["no weights found in", "noweights"],
        ["weight files"],
    ),
    Case(
        "layer-range-outside",
        lambda t, f: (
            f"merge_method: passthrough\nslices:\n  - sources:\n      - model: {f.ft1}\n        layer_range: [0, 9]\n"
        ),
        2,
        ["layer_range [0, 9] is outside", "which has 4 layers"],
    ),
    Case(
        "shape-mismatch",
        lambda t, f: linear_recipe(f.ft1, _model(t, "wide", hidden=32)),
        2,
        [
            "tensor model.embed_tokens.weight has different shapes",
            "ft1 [64, 16]",
            "wide [64, 32]",
            "more problems",
        ],
        ["-v"],
    ),
    Case(
        "missing-parameter",
        lambda t, f: (
            f"merge_method: ties\nbase_model: {f.base}\nmodels:\n  - model: {f.ft1}\n  - model: {f.ft2}\n"
        ),
        2,
        ["missing required parameter 'weight' for model", "ft1"],
    ),
    Case(
        "parameter-wrong-type",
        lambda t, f: linear_recipe(f.ft1, f.ft2).replace("weight: 1.0}", "weight: abc}", 1),
        2,
        ["parameter 'weight' for model", "ft1", "expected a number, got 'abc'"],
    ),
    Case(
        "density-above-one",
        lambda t, f: (
            f"merge_method: ties\nbase_model: {f.base}\nmodels:\n  - model: {f.ft1}\n    parameters: {{weight: 1, density: 1.5}}\n"
            f"  - model: {f.ft2}\n    parameters: {{weight: 1, density: 0.5}}\n"
        ),
        2,
        ["parameter 'density' for model", "ft1", "1.5 is above the maximum 1.0"],
    ),
    Case(
        "density-negative",
        lambda t, f: (
            f"merge_method: dare_ties\nbase_model: {f.base}\nparameters: {{weight: 1, density: -0.2}}\n"
            f"models:\n  - model: {f.ft1}\n  - model: {f.ft2}\n"
        ),
        2,
        ["parameter 'density'", "-0.2 is below the minimum 0.0"],
    ),
    Case(
        "della-epsilon",
        lambda t, f: (
            f"merge_method: della\nbase_model: {f.base}\nmodels:\n  - model: {f.ft1}\n"
            "    parameters: {weight: 1, density: 0.5, epsilon: 0.9}\n"
            f"  - model: {f.ft2}\n    parameters: {{weight: 1, density: 0.5, epsilon: 0.1}}\n"
        ),
        2,
        ["della: model", "ft1", "epsilon=0.9", "density + epsilon < 1"],
    ),
    Case(
        "unknown-dtype",
        lambda t, f: _two(t, f) + "dtype: float33\n",
        2,
        ["unknown dtype 'float33'"],
        ["bfloat16", "float16", "float32"],
    ),
    Case(
        "vocabulary-mismatch",
        lambda t, f: linear_recipe(f.ft1, _model(t, "bigvocab", vocab=80)),
        2,
        ["different vocabulary sizes", "[64, 16]", "[80, 16]"],
    ),
    Case(
        "missing-tensor",
        lambda t, f: _with(t, f, "holes", _drop_tensor),
        2,
        ["tensor model.layers.1.mlp.up_proj.weight is missing from", "holes"],
    ),
    Case(
        "truncated-safetensors",
        lambda t, f: _with(t, f, "trunc", _truncate),
        2,
        [f"trunc{os.sep}model.safetensors: not a valid safetensors file", "truncated"],
        ["corrupt"],
    ),
    Case(
        "header-length-beyond-file",
        lambda t, f: _with(t, f, "hdrlen", _header_too_long),
        2,
        [f"hdrlen{os.sep}model.safetensors", "header length 10000000 runs past the end"],
    ),
    Case(
        "malformed-header-json",
        lambda t, f: _with(t, f, "badjson", _bad_json),
        2,
        [f"badjson{os.sep}model.safetensors", "header is not valid JSON"],
    ),
    Case(
        "offsets-outside-file",
        lambda t, f: _with(t, f, "offsets", _offsets_outside),
        2,
        [f"offsets{os.sep}model.safetensors", "model.norm.weight", "lies at bytes 0..1000000000"],
    ),
    Case(
        "dtype-shape-vs-bytes",
        lambda t, f: _with(t, f, "dtypeshape", _dtype_shape_disagree),
        2,
        [f"dtypeshape{os.sep}model.safetensors", "model.norm.weight", "but occupies 64 bytes"],
    ),
    Case(
        "output-occupied",
        _two,
        2,
        ["already exists and is not empty"],
        ["--overwrite"],
        setup_out=lambda out: (out.mkdir(), (out / "keep.txt").write_text("mine")),
        out_exists_after=True,
    ),
    Case(
        "output-is-a-file",
        _two,
        2,
        ["exists and is not a folder"],
        setup_out=lambda out: out.write_text("x"),
        out_exists_after=True,
    ),
    Case(
        "output-parent-is-a-file",
        _two,
        2,
        ["cannot create the output folder", "is not a folder"],
        ["missing ones are created"],
        setup_out=lambda out: out.parent.write_text("x"),
    ),
    Case("unknown-device", _two, 2, ["unknown device 'tpu'"], ["cpu"], args=["--device", "tpu"]),
    Case(
        "bad-shard-size",
        _two,
        2,
        ["invalid size 'lots'"],
        ["5GB"],
        args=["--out-shard-size", "lots"],
    ),
]


def _resolve(text: str, tmp: Path) -> str:
    return text.replace("{tmp}", str(tmp))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_user_error_catalogue(
    case: Case, family: Family, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = write_recipe(tmp_path, case.recipe(tmp_path, family))
    out = tmp_path / ("file-parent/out" if case.id == "output-parent-is-a-file" else "out")
    if case.setup_out:
        case.setup_out(out)
    inputs = [p for p in tmp_path.iterdir() if p.is_dir() and p != out] + family.folders
    before = snapshot(*inputs)
    before_out = snapshot(out) if out.is_dir() else None

    r = run_cli(capsys, "merge", recipe, out, "--quiet", *case.args)

    assert r.code == case.code, r.err
    lines = r.err_lines
    assert 1 <= len(lines) <= 2, r.err
    assert lines[0].startswith("error: ")
    if len(lines) == 2:
        assert lines[1].startswith("hint: ")
    assert "Traceback" not in r.err
    for text in case.message:
        assert _resolve(text, tmp_path) in lines[0], (text, lines[0])
    for text in case.hint:
        assert len(lines) == 2 and text in lines[1], (text, r.err)
    # Files left behind: nothing new, nothing changed.
    assert out.exists() == case.out_exists_after
    if before_out is not None:
        assert snapshot(out) == before_out
    assert leftovers(out.parent if out.parent.is_dir() else tmp_path) == []
    assert snapshot(*inputs) == before


def test_several_problems_fold_into_two_lines_and_verbose_lists_them(
    family: Family, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = write_recipe(
        tmp_path,
        f"merge_method: ties\nbase_model: {family.base}\nmodels:\n"
        f"  - model: {family.ft1}\n  - model: {family.ft2}\n",
    )
    r = run_cli(capsys, "merge", recipe, tmp_path / "out")
    assert r.code == 2 and len(r.err_lines) == 2
    assert r.err_lines[0].endswith("(and 1 more problem)")
    assert r.err_lines[1] == "hint: add -v to list all 2 problems"
    r = run_cli(capsys, "plan", recipe, "-v")
    assert r.code == 2
    assert r.err_lines[0] == "error: 2 problems found while planning:"
    assert "ft1" in r.err_lines[1] and "ft2" in r.err_lines[2]


def test_recipe_file_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = run_cli(capsys, "merge", tmp_path / "none.yaml", tmp_path / "out")
    assert (
        r.code == 2 and r.err_lines[0] == f"error: recipe file '{tmp_path / 'none.yaml'}' not found"
    )
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    r = run_cli(capsys, "merge", binary, tmp_path / "out")
    assert r.code == 2 and r.err_lines[0].startswith("error: cannot read recipe")
    odd = write_recipe(tmp_path, "merge_method: linear\nmodels: !!int x\n", "odd.yaml")
    r = run_cli(capsys, "plan", odd)
    assert r.code == 2 and "invalid YAML" in r.err_lines[0] and len(r.err_lines) == 2
    two = write_recipe(tmp_path, "merge_method: linear\n---\nmerge_method: ties\n", "two.yaml")
    r = run_cli(capsys, "plan", two)
    # Two documents are a multi-stage recipe, planned as a chain: its problem is named.
    assert r.code == 2 and r.err_lines[0] == (
        "error: document 2: a second stage without a name (document 1 is already the final stage)"
    )


@pytest.mark.parametrize("legacy", [False, True], ids=["zip-pickle", "legacy-pickle"])
def test_hostile_pickle_never_runs(
    legacy: bool, family: Family, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "PWNED"
    evil = _model(tmp_path, "evil")
    (evil / "model.safetensors").unlink()
    state = {"model.embed_tokens.weight": _Payload(marker)}
    if legacy:
        with open(evil / "pytorch_model.bin", "wb") as fh:
            pickle.dump(state, fh)
    else:
        torch.save(state, evil / "pytorch_model.bin")
    recipe = write_recipe(tmp_path, linear_recipe(family.ft1, evil))
    for argv in (["plan", recipe], ["merge", recipe, tmp_path / "out", "--quiet"]):
        r = run_cli(capsys, *argv)
        assert r.code == 2, r.err
        assert len(r.err_lines) == 2, r.err  # torch's own warnings are not shown
        assert f"{evil / 'pytorch_model.bin'}: refused to load pickled weights" in r.err_lines[0]
        assert "weights_only=True" in r.err_lines[1]
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_plain_bin_weights_are_read(
    family: Family, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The safe loader is not a blanket refusal: an ordinary .bin checkpoint merges.
    plain = make_tiny_model(tmp_path / "plain", "llama", num_layers=4, seed=3, fmt="bin")
    recipe = write_recipe(tmp_path, linear_recipe(family.ft1, plain))
    assert run_cli(capsys, "merge", recipe, tmp_path / "out", "--quiet").code == 0


def test_nan_input_warns_with_tensor_and_model(
    family: Family, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nan = _model(tmp_path, "nanmodel")
    sd = load_file(nan / "model.safetensors")
    sd["model.layers.1.mlp.up_proj.weight"][0, 0] = float("nan")
    sd["model.norm.weight"][1] = float("inf")
    save_file(sd, nan / "model.safetensors", metadata={"format": "pt"})
    recipe = write_recipe(tmp_path, linear_recipe(family.ft1, nan))
    r = run_cli(capsys, "merge", recipe, tmp_path / "out", "--quiet")
    assert r.code == 0
    assert (
        f"warning: tensor model.layers.1.mlp.up_proj.weight of {nan} contains NaN or Inf values"
        in r.err_lines
    )
    assert f"warning: tensor model.norm.weight of {nan} contains NaN or Inf values" in r.err_lines
    assert sum("NaN" in line for line in r.err_lines) == 2


def test_tokenizer_remote_code_never_runs(
    family: Family, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "RAN"
    model = _model(tmp_path, "custom")
    cfg_path = model / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    cfg_path.write_text(json.dumps(cfg))
    (model / "tokenization_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    recipe = write_recipe(
        tmp_path,
        f"merge_method: linear\nbase_model: {model}\nmodels:\n"
        f"  - model: {model}\n    parameters: {{weight: 1}}\n"
        f"  - model: {family.ft1}\n    parameters: {{weight: 1}}\n",
    )
    out = tmp_path / "out"
    assert run_cli(capsys, "merge", recipe, out, "--quiet").code == 0
    r = run_cli(capsys, "verify", out)
    assert r.code == 0, r.err
    assert "custom code" in r.err and "not loaded" in r.err
    assert not marker.exists()


def test_runtime_failure_exits_1_and_cleans_up(
    family: Family,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An input that changes after planning is a failure while merging: exit 1, nothing left."""
    import meldkit.plan

    victim = _model(tmp_path, "victim")
    real_plan = meldkit.plan.plan_merge

    def plan_then_truncate(*a: object, **kw: object) -> object:
        plan = real_plan(*a, **kw)  # type: ignore[arg-type]
        _truncate(victim)
        return plan

    monkeypatch.setattr(meldkit.plan, "plan_merge", plan_then_truncate)
    recipe = write_recipe(tmp_path, linear_recipe(family.ft1, victim))
    r = run_cli(capsys, "merge", recipe, tmp_path / "out", "--quiet")
    assert r.code == 1, r.err
    assert (
        r.err_lines[0].startswith("error: ")
        and "victim" in r.err_lines[0]
        and "truncated" in r.err_lines[0]
    )
    assert len(r.err_lines) == 2 and "Traceback" not in r.err
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_internal_error_is_one_line_unless_debug(
    family: Family,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import meldkit.execute.pipeline as pipeline

    def broken(*a: object, **kw: object) -> object:
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(pipeline, "compute_tensor", broken)
    recipe = write_recipe(tmp_path, linear_recipe(family.ft1, family.ft2))
    r = run_cli(capsys, "merge", recipe, tmp_path / "out", "--quiet")
    assert r.code == 1
    assert r.err_lines == [
        "error: internal error: ZeroDivisionError: boom",
        "hint: this is a bug in meldkit; run again with --debug to see the traceback, and please report it",
    ]
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
    with pytest.raises(ZeroDivisionError):
        run_cli(capsys, "--debug", "merge", recipe, tmp_path / "out", "--quiet")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_debug_shows_the_traceback_of_user_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from meldkit.errors import RecipeError

    recipe = write_recipe(tmp_path, "")
    with pytest.raises(RecipeError):
        run_cli(capsys, "merge", recipe, tmp_path / "out", "--debug")
