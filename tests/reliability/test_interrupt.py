"""Interrupting a merge: Ctrl-C, SIGTERM and a crash (SIGKILL), then a clean and a resumed run.

The merge runs in a child process slowed down by the MELDKIT_TEST_SLOW_WRITE hook, so that the
signal lands while the reader and writer threads are busy. Checks: the child stops promptly
(no hang) with 130/143, leaves no output folder, removes its temporary folder (or, with
--resume, keeps exactly the shards its journal vouches for), and a later run produces the same
bytes as an uninterrupted merge, a resumed one without reading the finished shards' inputs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meldkit.execute.journal import JOURNAL_NAME
from meldkit.execute.pipeline import SLOW_WRITE_ENV
from meldkit.execute.runner import partial_path
from tests.reliability.helpers import (
    Family,
    folder_bytes,
    leftovers,
    linear_recipe,
    run_cli,
    snapshot,
    write_recipe,
)

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")

SHARD = "8KB"  # many small shards: the first completes after a few tensors
DELAY = "0.25"  # seconds per tensor write in the child: ~10 s for the whole merge


@pytest.fixture(scope="module")
def recipe(family: Family, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_recipe(
        tmp_path_factory.mktemp("interrupt-recipe"),
        linear_recipe(family.ft1, family.ft2, weights=[0.3, 0.7]),
    )


@pytest.fixture(scope="module")
def reference(recipe: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """An uninterrupted merge (in this process), for byte-for-byte comparisons."""
    from meldkit.cli.main import main

    out = tmp_path_factory.mktemp("reference") / "out"
    assert (
        main(["merge", str(recipe), str(out), "--out-shard-size", SHARD, "--quiet", "--seed", "3"])
        == 0
    )
    files = folder_bytes(out)
    assert sum(name.endswith(".safetensors") for name in files) >= 4
    return files


def _default_signals() -> None:
    # A child started from a shell job (or a CI runner) may inherit SIGINT ignored; a real
    # user's Ctrl-C reaches meldkit with the default disposition, so test that.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(recipe: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, SLOW_WRITE_ENV: DELAY, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "meldkit",
            "merge",
            str(recipe),
            str(out),
            "--out-shard-size",
            SHARD,
            "--seed",
            "3",
            *extra,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_signals,
    )


def _journaled(out: Path) -> list[str]:
    try:
        return sorted(json.loads((partial_path(out) / JOURNAL_NAME).read_text())["shards"])
    except (OSError, ValueError, KeyError):
        return []


def _wait_for_first_shard(proc: subprocess.Popen[str], out: Path) -> None:
    deadline = time.monotonic() + 90
    while not _journaled(out):
        if proc.poll() is not None:
            pytest.fail(f"the merge ended before it could be interrupted: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no shard was finished within 90 s")
        time.sleep(0.02)


def _stop(proc: subprocess.Popen[str], *signals: int) -> tuple[int, str]:
    for i, sig in enumerate(signals):
        if i:
            time.sleep(0.05)
        proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the merge hung after the signal")
    return proc.returncode, err


@pytest.mark.parametrize(
    ("signals", "code", "name"),
    [
        pytest.param((signal.SIGINT, signal.SIGINT), 130, "Ctrl-C (SIGINT)", id="double-ctrl-c"),
        # The same code path with another signal: a child process costs seconds, so it is slow.
        pytest.param((signal.SIGTERM,), 143, "SIGTERM", id="sigterm", marks=pytest.mark.slow),
    ],
)
def test_interrupt_removes_everything_then_a_rerun_succeeds(
    signals: tuple[int, ...],
    code: int,
    name: str,
    recipe: Path,
    reference: dict[str, bytes],
    family: Family,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    inputs = snapshot(*family.folders)
    out = tmp_path / "out"
    proc = _start(recipe, out)
    _wait_for_first_shard(proc, out)
    rc, err = _stop(proc, *signals)
    assert rc == code, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[-2] == (
        f"error: interrupted by {name}; the temporary files were removed and nothing "
        f"was written to {out}"
    )
    assert lines[-1] == (
        "hint: nothing was kept: run the same command again (add --resume to keep the finished "
        "shards if it is interrupted again)"
    )
    assert "Traceback" not in err
    assert not out.exists() and leftovers(tmp_path) == []
    # A --resume run has nothing to continue (the interrupt removed it all) and starts afresh;
    # a clean re-run; a re-run over the result with --overwrite. All give the same bytes.
    r = run_cli(capsys, "merge", recipe, out, "--out-shard-size", SHARD, "--seed", "3", "--resume")
    assert r.code == 0, r.err
    assert (
        f"note: --resume: no interrupted merge of {out} to continue; starting from the beginning"
        in r.err
    )
    assert folder_bytes(out) == reference
    clean = tmp_path / "clean"
    r = run_cli(capsys, "merge", recipe, clean, "--out-shard-size", SHARD, "--quiet", "--seed", "3")
    assert r.code == 0, r.err
    assert folder_bytes(clean) == reference
    r = run_cli(
        capsys,
        "merge",
        recipe,
        out,
        "--out-shard-size",
        SHARD,
        "--quiet",
        "--seed",
        "3",
        "--overwrite",
    )
    assert r.code == 0, r.err
    assert folder_bytes(out) == reference and leftovers(tmp_path) == []
    assert snapshot(*family.folders) == inputs


class _CountingLoads:
    """Counts the tensors a merge reads its inputs for."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from meldkit.execute import tensors

        self.names: list[str] = []
        real = tensors.TensorLoader.load

        def load(loader: tensors.TensorLoader, tensor: object, rows: object = None) -> object:
            self.names.append(tensor.name)  # type: ignore[attr-defined]
            return real(loader, tensor, rows)  # type: ignore[arg-type]

        monkeypatch.setattr(tensors.TensorLoader, "load", load)


def _shard_tensors(reference: dict[str, bytes], shards: list[str]) -> set[str]:
    index = json.loads(reference["model.safetensors.index.json"])
    return {t for t, f in index["weight_map"].items() if f in shards}


@pytest.mark.parametrize(
    ("sig", "code"),
    [
        pytest.param(signal.SIGTERM, 143, id="sigterm"),
        pytest.param(signal.SIGINT, 130, id="ctrl-c", marks=pytest.mark.slow),
    ],
)
def test_interrupted_resume_run_keeps_shards_and_resume_finishes_identically(
    sig: int,
    code: int,
    recipe: Path,
    reference: dict[str, bytes],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "out"
    proc = _start(recipe, out, "--resume")
    _wait_for_first_shard(proc, out)
    rc, err = _stop(proc, sig)
    assert rc == code, err
    kept = _journaled(out)
    shards = sum(name.endswith(".safetensors") for name in reference)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    name = "SIGTERM" if sig == signal.SIGTERM else "Ctrl-C (SIGINT)"
    verb = "is" if len(kept) == 1 else "are"
    assert kept and lines[-2:] == [
        f"error: interrupted by {name}; {len(kept)} of {shards} shards {verb} kept in "
        f"{partial_path(out)} and nothing was written to {out}",
        "hint: run the same command again with --resume to continue from them",
    ]
    assert not out.exists()
    # Only the journal and the shards it vouches for stay: nothing that looks like a model.
    assert sorted(p.name for p in partial_path(out).iterdir()) == sorted([JOURNAL_NAME, *kept])
    assert all((partial_path(out) / k).read_bytes() == reference[k] for k in kept)

    loads = _CountingLoads(monkeypatch)
    r = run_cli(capsys, "merge", recipe, out, "--out-shard-size", SHARD, "--seed", "3", "--resume")
    assert r.code == 0, r.err
    assert f"note: resuming: {len(kept)} of {shards} shard(s) already written and verified" in r.err
    assert folder_bytes(out) == reference
    assert JOURNAL_NAME not in os.listdir(out) and leftovers(tmp_path) == []
    # The finished shards' inputs were not even read.
    assert loads.names and not set(loads.names) & _shard_tensors(reference, kept)


def test_crash_leaves_no_output_and_resume_or_rerun_recover(
    recipe: Path,
    reference: dict[str, bytes],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    proc = _start(recipe, out)  # no --resume: a crash still leaves a journal behind
    _wait_for_first_shard(proc, out)
    rc, _ = _stop(proc, signal.SIGKILL)
    assert rc == -signal.SIGKILL
    assert not out.exists()  # nothing that looks complete
    kept = _journaled(out)
    assert kept

    # A corrupted finished shard is detected by its checksum and written again.
    victim = partial_path(out) / kept[0]
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    r = run_cli(capsys, "merge", recipe, out, "--out-shard-size", SHARD, "--seed", "3", "--resume")
    assert r.code == 0, r.err
    assert (
        f"warning: --resume: writing {kept[0]} again: its checksum does not match the journal"
        in r.err
    )
    assert folder_bytes(out) == reference and leftovers(tmp_path) == []


def test_plain_run_discards_a_crashed_run_and_resume_rejects_a_changed_recipe(
    recipe: Path,
    reference: dict[str, bytes],
    family: Family,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from meldkit.execute.journal import Journal

    out = tmp_path / "out"
    # Fake a crashed run: a partial folder with a journal that lists a (bogus) finished shard.
    partial = partial_path(out)
    partial.mkdir()
    (partial / "model-00001-of-00009.safetensors").write_bytes(b"half")
    journal = Journal(partial, "0" * 64)
    journal.shards["model-00001-of-00009.safetensors"] = {"size": 4, "crc32": "x"}
    journal.save()
    r = run_cli(capsys, "merge", recipe, out, "--out-shard-size", SHARD, "--seed", "3", "--resume")
    assert r.code == 0, r.err
    assert "warning: --resume: the interrupted merge used another recipe" in r.err
    assert folder_bytes(out) == reference and leftovers(tmp_path) == []

    # A plain run over a leftover of the same merge deletes it, and says --resume would not have.
    from meldkit.execute.journal import plan_fingerprint
    from meldkit.io.sizes import parse_size
    from meldkit.plan import PlanOptions, plan_merge

    out2 = tmp_path / "out2"
    plan = plan_merge(recipe, PlanOptions(out_shard_size=parse_size(SHARD)))
    leftover = Journal(partial_path(out2), plan_fingerprint(plan, "cpu", 3))
    partial_path(out2).mkdir()
    (partial_path(out2) / "junk").write_text("x")
    leftover.shards["model-00001-of-00009.safetensors"] = {"size": 1, "crc32": "y"}
    leftover.save()
    r = run_cli(capsys, "merge", recipe, out2, "--out-shard-size", SHARD, "--seed", "3")
    assert r.code == 0, r.err
    assert f"note: removed an interrupted earlier merge of {out2} (" in r.err
    assert "--resume would have continued it" in r.err
    assert folder_bytes(out2) == reference and leftovers(tmp_path) == []
