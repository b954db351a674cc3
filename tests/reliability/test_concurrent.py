"""Several merges at once: one output folder has one writer, different ones never interfere.

The first merge runs in a child process slowed down by the MELDKIT_TEST_SLOW_WRITE hook, so a
second one (in this process, or another child) reliably starts while it holds its lock.
Checks: the second merge of one destination is refused, naming the first (plain, --resume and
--overwrite alike) and touching none of its files; ``kill -9`` releases the lock; merges of the
same inputs into different folders both succeed byte for byte; and racing merges of one folder
publish exactly one complete model and leave nothing else behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meldkit.execute.output import lock_path
from meldkit.execute.pipeline import SLOW_WRITE_ENV
from meldkit.execute.runner import partial_path
from tests.reliability.helpers import (
    Family,
    folder_bytes,
    linear_recipe,
    run_cli,
    snapshot,
    write_recipe,
)

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX flock and signals")

SHARD = "8KB"
HINT = "hint: wait for it to finish or stop it, or merge into another output folder"


@pytest.fixture(scope="module")
def recipe(family: Family, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_recipe(
        tmp_path_factory.mktemp("concurrent-recipe"),
        linear_recipe(family.ft1, family.ft2, weights=[0.4, 0.6]),
    )


@pytest.fixture(scope="module")
def reference(recipe: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    from meldkit.cli.main import main

    out = tmp_path_factory.mktemp("concurrent-reference") / "out"
    assert main(["merge", str(recipe), str(out), "--out-shard-size", SHARD, "--quiet"]) == 0
    return folder_bytes(out)


def _start(recipe: Path, out: Path, *extra: str, delay: str = "0.2") -> subprocess.Popen[str]:
    env = {**os.environ, SLOW_WRITE_ENV: delay}
    argv = ["merge", str(recipe), str(out), "--out-shard-size", SHARD, "--quiet", *extra]
    return subprocess.Popen(
        [sys.executable, "-m", "meldkit", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_lock(proc: subprocess.Popen[str], out: Path) -> None:
    """Until ``proc`` holds the lock of ``out`` (its pid is in the lock file) and has its
    temporary folder."""
    deadline = time.monotonic() + 90
    while True:
        try:
            holder = lock_path(out).read_text()
        except OSError:
            holder = ""
        if holder == f"{proc.pid}\n" and partial_path(out).is_dir():
            return
        if proc.poll() is not None:
            pytest.fail(f"the first merge ended before the second started: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the first merge did not take its lock within 90 s")
        time.sleep(0.02)


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("a merge hung")
    return proc.returncode, err


def test_a_second_merge_of_the_same_output_is_refused_naming_the_first(
    recipe: Path,
    reference: dict[str, bytes],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "runs" / "out"  # the parent is missing: the first merge creates it
    first = _start(recipe, out)
    try:
        _wait_for_lock(first, out)
        error = f"error: another meldkit merge (pid {first.pid}) is writing {out}"
        for extra in ([], ["--resume"], ["--overwrite"], ["--resume", "--overwrite"]):
            r = run_cli(capsys, "merge", recipe, out, "--out-shard-size", SHARD, *extra)
            assert r.code == 2, (extra, r.err)
            assert r.err_lines == [error, HINT], extra
            # Refused before it touched anything: the first merge's folder is still there.
            assert partial_path(out).is_dir() and lock_path(out).read_text() == f"{first.pid}\n"
        assert first.poll() is None, "the first merge ended too early for this test to mean much"
    finally:
        code, err = _finish(first)
    assert code == 0, err
    assert folder_bytes(out) == reference
    assert sorted(os.listdir(out.parent)) == ["out"]  # no lock file, no temporary folder


def test_kill_9_releases_the_lock_and_a_later_run_takes_over(
    recipe: Path,
    reference: dict[str, bytes],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    first = _start(recipe, out)
    _wait_for_lock(first, out)
    first.send_signal(signal.SIGKILL)
    assert _finish(first)[0] == -signal.SIGKILL
    # A crash leaves the temporary folder and a lock file nobody holds (the kernel dropped it).
    assert sorted(os.listdir(tmp_path)) == [".out.meldkit-lock", ".out.meldkit-partial"]
    assert lock_path(out).read_text() == f"{first.pid}\n"
    r = run_cli(capsys, "merge", recipe, out, "--out-shard-size", SHARD, "--resume", "--quiet")
    assert r.code == 0, r.err
    assert folder_bytes(out) == reference
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_merges_of_the_same_inputs_into_different_folders_both_succeed(
    recipe: Path, reference: dict[str, bytes], family: Family, tmp_path: Path
) -> None:
    inputs = snapshot(*family.folders)
    runs = tmp_path / "runs"  # missing: both merges create it, neither may trip over the other
    outs = [runs / "a", runs / "b"]
    procs = [_start(recipe, out, delay="0.05") for out in outs]
    overlapped = False
    try:
        while all(p.poll() is None for p in procs) and not overlapped:
            overlapped = all(lock_path(out).exists() for out in outs)
            time.sleep(0.01)
    finally:
        results = [_finish(p) for p in procs]
    assert [code for code, _ in results] == [0, 0], results
    assert overlapped, "the two merges never ran at the same time"
    assert folder_bytes(outs[0]) == reference and folder_bytes(outs[1]) == reference
    assert sorted(os.listdir(runs)) == ["a", "b"]
    assert snapshot(*family.folders) == inputs


@pytest.mark.slow  # three child processes: about 25 s on two cores
def test_racing_merges_of_one_folder_publish_one_complete_model(
    recipe: Path, reference: dict[str, bytes], tmp_path: Path
) -> None:
    out = tmp_path / "new" / "out"
    procs = [_start(recipe, out, "--overwrite", delay="0.02") for _ in range(3)]
    results = [_finish(p) for p in procs]
    codes = [code for code, _ in results]
    assert set(codes) <= {0, 2} and 0 in codes, results
    for (code, err), proc in zip(results, procs):
        if code == 2:  # refused while another one held the lock, with the usual two lines
            expected = [
                [f"error: another meldkit merge (pid {other.pid}) is writing {out}", HINT]
                for other in procs
                if other is not proc
            ]
            expected.append([f"error: another meldkit merge is writing {out}", HINT])  # no pid yet
            assert err.splitlines() in expected, err
    assert folder_bytes(out) == reference
    assert sorted(os.listdir(out.parent)) == ["out"]
