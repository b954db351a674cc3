"""The command line itself: help on every option, and usage errors with the right usage."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from meldkit.cli.main import main
from meldkit.cli.parser import build_parser

# Hidden on purpose: `demo --overwrite` is a no-op kept for old scripts.
SUPPRESSED = {("demo", "--overwrite")}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {
        a.option_strings[0] if a.option_strings else a.dest: a
        for a in parser._actions
        if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
    }


def test_every_option_of_every_subcommand_has_help() -> None:
    parser = build_parser()
    subs = _subparsers(parser)
    # The core's subcommands, and those the side tools add (cli/tools.py).
    assert set(subs) >= {"merge", "plan", "methods", "demo", "make-test-models", "verify", "multi"}
    missing = []
    for name, sub in [("", parser), *subs.items()]:
        for flag, action in _options(sub).items():
            if (name, flag) in SUPPRESSED:
                assert action.help == argparse.SUPPRESS, (name, flag)
            elif not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {flag}")
    assert missing == []


def test_every_subcommand_has_help_in_the_top_level_listing(capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # one line per subcommand
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name, text in [
        ("merge", "run a recipe and write a model folder"),
        ("plan", "check a recipe and show what a merge would do"),
        ("methods", "list the merge methods, or describe one"),
        ("demo", "make tiny models and merge them (no downloads)"),
        ("make-test-models", "write tiny models (a base and fine-tunes) to try recipes on"),
        ("verify", "check a merged model folder"),
    ]:
        assert re.search(rf"^    {re.escape(name)}\s+{re.escape(text)}$", out, re.M), name


def test_plan_shares_the_merge_options_it_takes() -> None:
    subs = _subparsers(build_parser())
    plan, merge = _options(subs["plan"]), _options(subs["merge"])
    shared = set(plan) & set(merge)
    assert {
        "--out-shard-size",
        "--strict",
        "--unsafe-truncate-embeddings",
        "--transformers-cache",
        "-v",
        "--debug",
    } <= shared
    for flag in shared:
        a, b = plan[flag], merge[flag]
        assert (a.option_strings, a.dest, a.default, a.help) == (
            b.option_strings,
            b.dest,
            b.default,
            b.help,
        ), flag


def test_arch_help_names_every_test_architecture() -> None:
    from meldkit.testing import ARCHS

    help_text = _options(_subparsers(build_parser())["make-test-models"])["--arch"].help or ""
    named = re.findall(r"[a-z][a-z0-9_]+", help_text.split(";", 1)[1])
    assert sorted(["llama", *named[1:]]) == sorted(ARCHS)


@pytest.mark.parametrize(
    "argv",
    [
        ["merge", "r.yaml", "out", "--bogus"],
        ["merge", "--bogus", "r.yaml", "out"],
        ["plan", "r.yaml", "--bogus"],
        ["methods", "--bogus"],
        ["demo", "d", "--bogus"],
        ["make-test-models", "d", "--bogus"],
        ["verify", "folder", "--bogus"],
    ],
)
def test_unknown_option_shows_the_subcommand_usage(argv, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert lines[0].startswith(f"usage: meldkit {argv[0]} ")
    assert lines[-1] == f"meldkit {argv[0]}: error: unrecognized arguments: --bogus"
    assert captured.out == ""
    assert list(Path(tmp_path).iterdir()) == []  # nothing was made


def test_extra_positional_is_reported_by_the_subcommand(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["merge", "r.yaml", "out", "surplus"])
    assert info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("usage: meldkit merge ")
    assert err[-1] == "meldkit merge: error: unrecognized arguments: surplus"


def test_unknown_top_level_option_shows_the_top_level_usage(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--bogus", "methods"])
    assert info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("usage: meldkit [-h]")
    assert err[-1] == "meldkit: error: unrecognized arguments: --bogus"


def test_missing_argument_shows_the_subcommand_usage(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["merge", "r.yaml"])
    assert info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("usage: meldkit merge ")
    assert err[-1] == "meldkit merge: error: the following arguments are required: out"


@pytest.mark.parametrize("command", ["merge", "plan", "methods", "make-test-models", "verify"])
def test_debug_is_accepted_after_every_subcommand(command) -> None:
    argv = {"merge": ["r", "o"], "plan": ["r"], "make-test-models": ["d"], "verify": ["f"]}
    args = build_parser().parse_args([command, *argv.get(command, []), "--debug"])
    assert args.debug is True
    assert build_parser().parse_args(["--debug", command, *argv.get(command, [])]).debug is True
