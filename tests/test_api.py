"""The Python API: run_merge / plan_merge / load_config take a path, YAML text, a dict or a config.

It is a first-class interface: warnings reach the caller as MeldWarning (or an ``on_warning``
callback), hints name keyword options rather than CLI flags, and ``dir(meldkit)`` is the API.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import logging
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

import meldkit
from meldkit.api import python_spelling
from meldkit.cli.main import build_parser, main
from meldkit.errors import MeldWarning, OptionError, OutputError, PlanError, RecipeError
from meldkit.testing import read_model

SRC = Path(meldkit.__file__).parent


def _ties_with_typo(base: Path, a: Path, b: Path) -> str:
    return (
        f"merge_method: ties\nbase_model: {base}\nmodels:\n"
        f"  - model: {a}\n    parameters: {{weight: 1.0, density: 0.5}}\n"
        f"  - model: {b}\n    parameters: {{weight: 1.0, densty: 0.5}}\n"
    )


DENSTY = "models[1].parameters: parameter 'densty' is not used by ties and is ignored. Did you mean 'density'?"


def _linear(*models: Path, extra: str = "") -> str:
    body = "".join(f"  - model: {m}\n    parameters: {{weight: 1.0}}\n" for m in models)
    return f"merge_method: linear\nmodels:\n{body}{extra}"


def _meld_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, MeldWarning)]


def test_recipe_forms_give_the_same_merge(llama_family, tmp_path):
    base, (a, b) = llama_family
    recipe = {
        "merge_method": "linear",
        "models": [
            {"model": str(a), "parameters": {"weight": 1}},
            {"model": str(b), "parameters": {"weight": 3}},
        ],
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    forms = {
        "dict": recipe,
        "text": path.read_text(),
        "path": path,
        "config": meldkit.load_config(recipe),
    }
    outputs = {}
    for name, form in forms.items():
        plan = meldkit.run_merge(form, tmp_path / name, quiet=True)
        assert isinstance(plan, meldkit.MergePlan)
        outputs[name] = (tmp_path / name / "model.safetensors").read_bytes()
    assert len(set(outputs.values())) == 1
    merged, x, y = read_model(tmp_path / "dict"), read_model(a), read_model(b)
    name = "model.layers.2.self_attn.o_proj.weight"
    assert (merged[name] - (x[name] + 3 * y[name]) / 4).abs().max() < 1e-6


def test_plan_merge_takes_options_or_keywords(llama_family):
    base, (a, b) = llama_family
    recipe = f"merge_method: passthrough\nmodels: [{{model: {a}}}]\n"
    plan = meldkit.plan_merge(recipe, out_shard_size=10_000)
    assert len(plan.shards) > 1 and plan.bytes_to_write > 0
    assert len(meldkit.plan_merge(recipe, out_shard_size="10KB").shards) == len(plan.shards)
    # Keywords override a PlanOptions given as well.
    options = meldkit.PlanOptions(out_shard_size=10**12)
    assert len(meldkit.plan_merge(recipe, options, out_shard_size=10_000).shards) > 1
    assert len(meldkit.plan_merge(recipe, options).shards) == 1


# -- warnings -------------------------------------------------------------------------------


def test_run_merge_warns_about_a_recipe_typo(llama_family, tmp_path):
    base, (a, b) = llama_family
    with pytest.warns(MeldWarning, match=f"^{re.escape(DENSTY)}$") as record:
        meldkit.run_merge(_ties_with_typo(base, a, b), tmp_path / "out", quiet=True)
    assert _meld_warnings(record.list) == [DENSTY]
    # Attributed to the caller's line, not to meldkit's internals.
    assert [w.filename for w in record.list if w.category is MeldWarning] == [__file__]
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_plan_merge_warns_and_keeps_the_warnings(llama_family):
    base, (a, b) = llama_family
    with pytest.warns(MeldWarning, match=f"^{re.escape(DENSTY)}$") as record:
        plan = meldkit.plan_merge(_ties_with_typo(base, a, b))
    assert _meld_warnings(record.list) == [DENSTY]
    assert plan.warnings == [DENSTY]


def test_on_warning_replaces_python_warnings(llama_family, tmp_path):
    base, (a, b) = llama_family
    seen: list[str] = []
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        meldkit.run_merge(
            _ties_with_typo(base, a, b), tmp_path / "out", quiet=True, on_warning=seen.append
        )
        meldkit.plan_merge(_ties_with_typo(base, a, b), on_warning=seen.append)
    assert seen == [DENSTY, DENSTY]
    assert _meld_warnings(record) == []


def test_a_warning_filter_of_error_stops_before_computing(llama_family, tmp_path):
    base, (a, b) = llama_family
    with warnings.catch_warnings():
        warnings.simplefilter("error", MeldWarning)
        with pytest.raises(MeldWarning, match=f"^{re.escape(DENSTY)}$"):
            meldkit.run_merge(_ties_with_typo(base, a, b), tmp_path / "out", quiet=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_nan_inputs_warn_through_the_api(llama_family, tmp_path):
    from safetensors.torch import load_file, save_file

    base, (a, b) = llama_family
    nan = tmp_path / "nanmodel"
    shutil.copytree(b, nan)
    sd = load_file(nan / "model.safetensors")
    sd["model.layers.1.mlp.up_proj.weight"][0, 0] = float("nan")
    save_file(sd, nan / "model.safetensors", metadata={"format": "pt"})
    with pytest.warns(MeldWarning) as record:
        meldkit.run_merge(_linear(a, nan), tmp_path / "out", quiet=True)
    assert _meld_warnings(record.list) == [
        f"tensor model.layers.1.mlp.up_proj.weight of {nan} contains NaN or Inf values"
    ]
    # Found by an engine thread, still attributed to the line that called run_merge.
    assert [w.filename for w in record.list if w.category is MeldWarning] == [__file__]
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_merge_warnings_name_keyword_options(llama_family, tmp_path):
    base, (a, b) = llama_family
    recipe = _linear(a, b, extra="chat_template: chatml\n")
    with pytest.warns(MeldWarning) as record:
        meldkit.run_merge(recipe, tmp_path / "out", quiet=True, copy_tokenizer=False)
    assert _meld_warnings(record.list) == [
        "chat_template is dropped because copy_tokenizer=False was given"
    ]


def test_progress_notes_go_to_the_meldkit_logger(llama_family, tmp_path, caplog):
    base, (a, b) = llama_family
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="meldkit"):
        meldkit.run_merge(_linear(a, b), out, quiet=True, resume=True)
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "meldkit",
            "INFO",
            f"resume=True: no interrupted merge of {out} to continue; starting from the beginning",
        )
    ]


# -- errors and their hints -----------------------------------------------------------------


def test_occupied_output_hint_names_the_keyword(llama_family, tmp_path, capsys):
    base, (a, b) = llama_family
    recipe = tmp_path / "r.yaml"
    recipe.write_text(_linear(a, b))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    message = f"output folder {out} already exists and is not empty"
    with pytest.raises(OutputError) as info:
        meldkit.run_merge(recipe, out, quiet=True)
    exc = info.value
    assert type(exc) is OutputError and exc.exit_code == 2
    assert exc.message == message and exc.args == (message,)
    assert exc.hint == "pass overwrite=True to replace it, or choose another folder"
    # The same object as raised, with its traceback: the innermost frame is where it was raised.
    assert info.traceback[-1].path.name != "api.py"
    # The CLI keeps its own spelling.
    assert main(["merge", str(recipe), str(out), "--quiet"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {message}",
        "hint: pass --overwrite to replace it, or choose another folder",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "r.yaml"]
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    meldkit.run_merge(recipe, out, quiet=True, overwrite=True)
    assert (out / "model.safetensors").is_file() and not (out / "keep.txt").exists()


def test_strict_hints_name_the_keyword(llama_family):
    base, (a, b) = llama_family
    with pytest.raises(RecipeError) as info:
        meldkit.load_config(_linear(a, b, extra="colour: blue\n"), strict=True)
    assert info.value.hint == "remove or fix the key, or drop strict=True to only warn"
    with pytest.raises(RecipeError) as info:
        meldkit.load_config(_linear(a, b, extra="colour: blue\nzzz: 1\n"), strict=True)
    assert info.value.problems == [
        "unknown key 'colour' is ignored.",
        "unknown key 'zzz' is ignored.",
    ]
    assert info.value.hint == "remove or fix each key, or drop strict=True to only warn"
    with pytest.raises(PlanError) as info:
        meldkit.plan_merge(_ties_with_typo(base, a, b), strict=True)
    assert info.value.problems == [DENSTY]
    assert info.value.hint == "fix the recipe, or drop strict=True to only warn"


def test_vocabulary_mismatch_names_the_keyword_in_error_and_warning(tmp_path, capsys):
    from meldkit.testing import make_tiny_model

    a = make_tiny_model(tmp_path / "a", "llama", num_layers=2, vocab=128, seed=1)
    b = make_tiny_model(tmp_path / "b", "llama", num_layers=2, vocab=160, seed=2)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(_linear(a, b))
    problem = (
        f"the models have different vocabulary sizes ({a} [128, 16], {b} [160, 16] for "
        "model.embed_tokens.weight); set `tokenizer_source: base` (keep the base vocabulary) or "
        "`tokenizer_source: union` (all tokens), or pass {}"
    )
    with pytest.raises(PlanError) as info:
        meldkit.run_merge(recipe, tmp_path / "out", quiet=True)
    assert info.value.problems == [problem.format("unsafe_truncate_embeddings=True")]
    assert info.value.message == problem.format("unsafe_truncate_embeddings=True")
    assert main(["merge", str(recipe), str(tmp_path / "out"), "--quiet"]) == 2
    assert capsys.readouterr().err.splitlines()[0] == (
        "error: " + problem.format("--unsafe-truncate-embeddings")
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "r.yaml"]
    with pytest.warns(MeldWarning) as record:
        meldkit.run_merge(recipe, tmp_path / "out", quiet=True, unsafe_truncate_embeddings=True)
    assert (
        "model.embed_tokens.weight: truncating the vocabulary to 128 rows "
        "(unsafe_truncate_embeddings=True)"
    ) in _meld_warnings(record.list)


def test_problems_are_respelled_with_the_message():
    exc = PlanError(["a (pass --unsafe-truncate-embeddings)", "b"], hint="drop --strict")
    exc.respell(python_spelling)
    assert exc.problems == ["a (pass unsafe_truncate_embeddings=True)", "b"]
    assert exc.message == (
        "2 problems found while planning:\n  - a (pass unsafe_truncate_embeddings=True)\n  - b"
    )
    assert exc.args == (exc.message,) and exc.hint == "drop strict=True"


def test_unknown_options_are_option_errors(llama_family, tmp_path):
    base, (a, b) = llama_family
    recipe = _linear(a, b)
    with pytest.raises(OptionError) as info:
        meldkit.run_merge(recipe, tmp_path / "o", overwirte=True)
    assert (
        info.value.message == "unknown option 'overwirte' for run_merge. Did you mean 'overwrite'?"
    )
    assert info.value.hint.startswith("run_merge takes: cache_dir, copy_tokenizer, device, ")
    assert isinstance(info.value, TypeError) and isinstance(info.value, meldkit.MeldError)
    with pytest.raises(OptionError) as info:
        meldkit.plan_merge(recipe, device="cuda", colour="blue")
    assert info.value.message == "unknown options 'colour', 'device' for plan_merge"
    assert info.value.hint == (
        "plan_merge takes: cache_dir, out_shard_size, strict, unsafe_truncate_embeddings"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "cli, api",
    [
        (
            "pass --overwrite to replace it, or choose another folder",
            "pass overwrite=True to replace it, or choose another folder",
        ),
        (
            "run the same command with --resume to continue",
            "call run_merge again with resume=True to continue",
        ),
        (
            "use --device cpu (the default) or --device auto",
            'use device="cpu" (the default) or device="auto"',
        ),
        ("or pass --unsafe-truncate-embeddings", "or pass unsafe_truncate_embeddings=True"),
        (
            "pass --transformers-cache if it is cached elsewhere",
            "pass cache_dir=... if it is cached elsewhere",
        ),
        ("or --cache-dir /data/hf", 'or cache_dir="/data/hf"'),
        ("--out-shard-size 5GB or more", 'out_shard_size="5GB" or more'),
        ("set --out-shard-size", "set out_shard_size=..."),
        ("--no-copy-tokenizer was given", "copy_tokenizer=False was given"),
        ("--cuda or --gpu-rich", 'device="cuda" or device="cuda"'),
        ("-j 4 or --num-threads 4", "threads=4 or threads=4"),
        ("--random-seed 3", "seed=3"),
        ("--resume: writing x again", "resume=True: writing x again"),
        ("fix the recipe; add -v to list all 3 problems", "fix the recipe"),
        ("run with -v to see where the time went", "run with verbose=1 to see where the time went"),
        (
            "a bug; run again with --debug to see the traceback, and please report it",
            "a bug, and please report it",
        ),
        (
            "close programs (`meldkit plan` shows the estimated peak)",
            "close programs (`meldkit.plan_merge()` shows the estimated peak)",
        ),
        ("`meldkit methods` lists them", "`meldkit methods` lists them"),
        ("model org/name--v2 in /tmp/a-b", "model org/name--v2 in /tmp/a-b"),
        ("--trust-remote-code", "--trust-remote-code"),
    ],
)
def test_python_spelling(cli, api):
    assert python_spelling(cli) == api
    assert python_spelling(api) == api  # applying it twice changes nothing


def _api_options() -> set[str]:
    from meldkit.execute.runner import RunOptions

    fields = dataclasses.fields(meldkit.PlanOptions) + dataclasses.fields(RunOptions)
    return {f.name for f in fields}


def _cli_actions() -> list[argparse.Action]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [a for p in sub.choices.values() for a in p._actions]


def test_every_cli_option_the_api_accepts_is_spelled_as_a_keyword():
    options, checked = _api_options(), set()
    for action in _cli_actions():
        if action.dest not in options:
            continue
        for flag in action.option_strings:
            if isinstance(action, argparse._CountAction):
                expected = f"pass {action.dest}=1"
            elif action.nargs == 0:
                expected = f"pass {action.dest}={action.const}"
            else:
                expected = f"pass {action.dest}=..."
            assert python_spelling(f"pass {flag}") == expected, flag
            checked.add(flag)
    assert {"--overwrite", "--resume", "--strict", "--unsafe-truncate-embeddings"} <= checked
    assert {"--cache-dir", "--transformers-cache", "--out-shard-size", "-j"} <= checked


def _message_texts() -> list[tuple[str, str]]:
    """Every string literal of the library outside the CLI (and the translation table in api.py),
    docstrings left out."""
    texts = []
    for path in sorted(SRC.rglob("*.py")):
        if "cli" in path.relative_to(SRC).parts or path.name == "api.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docs = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docs
            ):
                texts.append((f"{path.relative_to(SRC)}:{node.lineno}", node.value))
    return texts


def test_no_hint_or_message_reaches_the_api_with_a_cli_flag():
    keywords = {f for a in _cli_actions() if a.dest in _api_options() for f in a.option_strings}
    keywords |= {"--cuda", "--gpu-rich"}
    flag = re.compile(r"(?<![\w-])--?[a-z][a-z0-9-]*")
    found, left = set(), []
    for where, text in _message_texts():
        flags = set(flag.findall(text)) & keywords
        found |= flags
        spelled = python_spelling(text)
        left += [(where, f) for f in set(flag.findall(spelled)) & keywords]
        if re.search(r"\bmeldkit (plan|merge)\b", spelled):
            left.append((where, "meldkit plan/merge"))
    assert left == []
    # The scan does see the hints (so it cannot pass by reading nothing).
    assert {"--overwrite", "--resume", "--strict", "--device"} <= found


# -- the package namespace ------------------------------------------------------------------


def test_dir_is_the_api():
    assert dir(meldkit) == sorted(meldkit.__all__)
    for name in meldkit.__all__:
        assert getattr(meldkit, name) is not None
    assert meldkit.plan_merge is meldkit.api.plan_merge
    assert meldkit.load_config is meldkit.api.load_config
    assert issubclass(meldkit.MeldWarning, UserWarning)
    stray = {
        name
        for name, value in vars(meldkit).items()
        if not name.startswith("_") and type(value) is not type(sys)
    }
    assert stray <= set(meldkit.__all__)
    for name in ("Any", "TYPE_CHECKING", "importlib", "annotations"):
        assert not hasattr(meldkit, name), name
    with pytest.raises(AttributeError, match="^module 'meldkit' has no attribute 'Any'$"):
        meldkit.Any  # noqa: B018


def test_import_and_help_stay_free_of_torch():
    code = (
        "import pydoc, sys, meldkit\n"
        "names = [getattr(meldkit, n) for n in meldkit.__all__]\n"
        "text = pydoc.render_doc(meldkit)\n"
        "assert 'run_merge' in text and 'MeldWarning' in text, text\n"
        "print(dir(meldkit) == sorted(meldkit.__all__), 'torch' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "True False\n"
