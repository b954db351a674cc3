"""cli.process: each process-level trick is on by default and MELDKIT_TRICKS_OFF switches it off."""

from __future__ import annotations

import gc
import os

import pytest

from meldkit.cli import process


def test_tricks_are_on_unless_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(process.TRICKS_OFF_ENV, raising=False)
    assert all(process.enabled(t) for t in process.TRICKS)
    monkeypatch.setenv(process.TRICKS_OFF_ENV, " gc_freeze, fast_exit ")
    assert [process.enabled(t) for t in process.TRICKS] == [True, False, False]


def test_omp_policy_set_only_when_on_and_never_over_the_users(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setenv(process.TRICKS_OFF_ENV, "omp_passive")
    process.prepare()
    assert "OMP_WAIT_POLICY" not in os.environ
    monkeypatch.delenv(process.TRICKS_OFF_ENV)
    process.prepare()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    process.prepare()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    monkeypatch.setenv(process.TRICKS_OFF_ENV, "omp_pasive")
    process.prepare()
    assert capsys.readouterr().err == (
        "warning: MELDKIT_TRICKS_OFF names unknown trick(s) omp_pasive "
        "(known: omp_passive, gc_freeze, fast_exit)\n"
    )


def test_engine_import_freezes_what_it_created(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(process.TRICKS_OFF_ENV, raising=False)
    try:
        before = gc.get_freeze_count()
        with process.engine_import():
            assert not gc.isenabled()
            made = [[i] for i in range(1000)]  # container objects the collector tracks
        assert gc.isenabled() and gc.get_freeze_count() >= before + len(made)
        gc.unfreeze()
        monkeypatch.setenv(process.TRICKS_OFF_ENV, "gc_freeze")
        with process.engine_import():
            assert gc.isenabled()
            made = [[i] for i in range(1000)]
        assert gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()
        gc.enable()
