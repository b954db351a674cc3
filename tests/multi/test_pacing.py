"""Pacing streamed merges: a merge waits while other output tensors' streamed inputs of at least
the read-ahead budget are alive, never for its own output's, and never forever."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from meldkit.execute.policy import EnginePolicy
from meldkit.execute.runner import RunOptions
from meldkit.multi import ChainOptions, pacing, run_chain
from meldkit.multi.pacing import Pacer
from tests.multi.conftest import FINAL, stage_ab, stage_c


def _in_thread(pacer: Pacer, owner: str, numel: int) -> tuple[threading.Thread, list[torch.Tensor]]:
    """Start ``pacer.produce(owner, ...)`` of a float32 tensor of ``numel`` in a thread; the
    list receives the tensor once merged."""
    got: list[torch.Tensor] = []

    def run() -> None:
        got.append(pacer.produce(owner, _merge(numel)))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, got


def _merge(numel: int) -> Callable[[], torch.Tensor]:
    return lambda: torch.zeros(numel)


def test_a_merge_waits_until_a_large_output_tensors_inputs_are_released() -> None:
    pacer = Pacer(budget=1000)
    a1 = pacer.produce("a", _merge(200))  # 800 bytes
    a2 = pacer.produce("a", _merge(200))  # the same output: no wait; 1600 bytes for "a"
    assert pacer.alive_bytes() == 1600 and pacer.alive_bytes(excluding="a") == 0
    thread, got = _in_thread(pacer, "b", 10)
    thread.join(0.3)
    assert thread.is_alive() and not got  # held back
    del a1  # half of "a" released: it still counts in full (its method holds both)
    thread.join(0.3)
    assert thread.is_alive() and not got and pacer.alive_bytes() == 1600
    del a2
    thread.join(5)
    assert not thread.is_alive() and got[0].shape == (10,)
    assert pacer.alive_bytes() == 40  # "b"'s tensor, held in got


def test_inputs_below_the_budget_do_not_hold_back_the_next_merge() -> None:
    pacer = Pacer(budget=1000)
    kept = [pacer.produce(name, _merge(100)) for name in ("a", "b")]  # 400 + 400 bytes
    thread, got = _in_thread(pacer, "c", 10)
    thread.join(5)
    assert not thread.is_alive() and got
    assert pacer.alive_bytes(excluding="c") == 800
    kept.append(pacer.produce("d", _merge(100)))  # 840 < 1000 still: no wait
    assert pacer.alive_bytes() == 1240


def test_the_wait_ends_on_its_own_when_nothing_is_released() -> None:
    # A failed later stage keeps its inputs alive in its traceback while the engine waits for
    # the read in progress: that read must not wait forever.
    pacer = Pacer(budget=10, max_wait=0.2)
    held = pacer.produce("a", _merge(100))
    started = time.monotonic()
    later = pacer.produce("b", _merge(1))
    waited = time.monotonic() - started
    assert 0.2 <= waited < 3 and later.shape == (1,) and held.shape == (100,)


def test_a_chain_merged_just_in_time_has_the_written_runs_bytes(
    tmp_path: Path, family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A zero budget: every streamed tensor waits until the inputs of the output tensors before
    # it are released. With no time limit on the wait, a release the engine never makes would
    # hang the run, which the thread's join reports.
    monkeypatch.setattr(pacing, "MAX_WAIT_SECONDS", 1e6)
    chain_file = tmp_path / "chain.yaml"
    chain_file.write_text("---\n".join([stage_ab(family), stage_c(family), FINAL]))
    policy = EnginePolicy(read_ahead_bytes=0, read_ahead_whole_tensor_bytes=0)
    run = RunOptions(quiet=True, policy=policy)
    for mode in ("written", "streamed"):
        folder = tmp_path / mode
        options = ChainOptions(folder / "inter", folder / "out", stream=mode == "streamed")
        thread = threading.Thread(target=run_chain, args=(chain_file, options, run), daemon=True)
        thread.start()
        thread.join(60)
        assert not thread.is_alive(), f"the {mode} chain did not finish"
    written = (tmp_path / "written" / "out" / "model.safetensors").read_bytes()
    assert (tmp_path / "streamed" / "out" / "model.safetensors").read_bytes() == written
    assert not (tmp_path / "streamed" / "inter" / "ab").exists()
