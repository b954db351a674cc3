"""``meldkit.run_multi``: the Python spelling of ``meldkit multi``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import meldkit
from meldkit.cli.main import main
from meldkit.testing import read_model


def test_run_multi_equals_the_cli_and_reuses_its_cache(tmp_path: Path, chain_file: Path) -> None:
    result = meldkit.run_multi(chain_file, tmp_path / "out", tmp_path / "inter", quiet=True)
    assert result.executed == ["ab", "c", "final"]
    cli = ["multi", str(chain_file), "--out", str(tmp_path / "cli"), "-I", str(tmp_path / "ci")]
    assert main([*cli, "--quiet"]) == 0
    ours, theirs = read_model(tmp_path / "out"), read_model(tmp_path / "cli")
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    again = meldkit.run_multi(
        chain_file, tmp_path / "out", tmp_path / "inter", quiet=True, overwrite=True
    )
    assert (again.executed, again.cached) == (["final"], ["ab", "c"])


def test_run_multi_names_a_misspelt_option(tmp_path: Path, chain_file: Path) -> None:
    with pytest.raises(meldkit.OptionError, match=r"unknown option 'overwite' for run_merge"):
        meldkit.run_multi(chain_file, tmp_path / "out", tmp_path / "inter", overwite=True)
