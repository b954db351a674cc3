"""After a stopped run, the error says what was kept, and the hint how to go on from there.

The stops are made in this process at chosen points (the handler of a real signal raises the
same :class:`Interrupted` in the main thread; test_interrupt.py sends real signals), so each
case is exact: nothing finished yet, some shards finished, a failure instead of a signal.
"""

from __future__ import annotations

import errno
import signal
from pathlib import Path

import pytest

from meldkit.execute import pipeline, runner
from meldkit.execute.interrupt import Interrupted
from meldkit.execute.journal import JOURNAL_NAME, Journal
from meldkit.execute.policy import policy_from_environment
from meldkit.execute.runner import partial_path
from meldkit.io.sizes import parse_size
from meldkit.io.writer import ShardedWriter
from meldkit.plan import PlanOptions, plan_merge
from meldkit.plan.planner import MergePlan
from tests.reliability.helpers import Family, leftovers, linear_recipe, run_cli, write_recipe

SHARD = "8KB"


@pytest.fixture(scope="module")
def recipe(family: Family, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_recipe(
        tmp_path_factory.mktemp("hints-recipe"),
        linear_recipe(family.ft1, family.ft2, weights=[0.3, 0.7]),
    )


@pytest.fixture(scope="module")
def plan(recipe: Path) -> MergePlan:
    return plan_merge(recipe, PlanOptions(out_shard_size=parse_size(SHARD)))


def _merge(capsys: pytest.CaptureFixture[str], recipe: Path, out: Path, *extra: str):  # type: ignore[no-untyped-def]
    return run_cli(capsys, "merge", recipe, out, "--out-shard-size", SHARD, "--seed", "3", *extra)


def _sigterm(*args: object, **kw: object) -> None:
    raise Interrupted(int(signal.SIGTERM))


def test_plain_run_interrupted_says_nothing_was_kept(
    recipe: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pipeline.ComputeStage, "run", _sigterm)
    out = tmp_path / "out"
    r = _merge(capsys, recipe, out)
    assert r.code == 143
    assert r.err_lines[-2:] == [
        f"error: interrupted by SIGTERM; the temporary files were removed and nothing was "
        f"written to {out}",
        "hint: nothing was kept: run the same command again (add --resume to keep the finished "
        "shards if it is interrupted again)",
    ]
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("where", ["first tensor", "checking the earlier run"])
def test_resume_run_interrupted_before_any_shard_does_not_promise_a_continuation(
    where: str,
    recipe: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if where == "first tensor":
        monkeypatch.setattr(pipeline.ComputeStage, "run", _sigterm)
    else:
        monkeypatch.setattr(runner, "start_journal", _sigterm)
    out = tmp_path / "out"
    r = _merge(capsys, recipe, out, "--resume")
    assert r.code == 143
    assert r.err_lines[-2:] == [
        f"error: interrupted by SIGTERM before any shard was finished; nothing was kept and "
        f"nothing was written to {out}",
        "hint: run the same command again with --resume (it starts from the beginning)",
    ]
    # "nothing was kept" is true: not even an empty temporary folder stays.
    assert not out.exists() and leftovers(tmp_path) == []


def test_resume_run_interrupted_after_some_shards_counts_them(
    recipe: Path,
    plan: MergePlan,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    last = pipeline._tensors_to_compute(plan, set(), policy_from_environment())[-1].name
    real = pipeline.ComputeStage.run

    def stop_at_the_last(stage: pipeline.ComputeStage, piece, *args):  # type: ignore[no-untyped-def]
        if piece.tensor.name == last:
            _sigterm()
        return real(stage, piece, *args)

    monkeypatch.setattr(pipeline.ComputeStage, "run", stop_at_the_last)
    out = tmp_path / "out"
    r = _merge(capsys, recipe, out, "--resume")
    assert r.code == 143
    journal = Journal.read(partial_path(out))
    assert journal is not None
    kept = sorted(journal["shards"])
    n = len(plan.shards)
    assert 0 < len(kept) < n
    verb = "is" if len(kept) == 1 else "are"
    assert r.err_lines[-2:] == [
        f"error: interrupted by SIGTERM; {len(kept)} of {n} shards {verb} kept in "
        f"{partial_path(out)} and nothing was written to {out}",
        "hint: run the same command again with --resume to continue from them",
    ]
    assert sorted(p.name for p in partial_path(out).iterdir()) == sorted([JOURNAL_NAME, *kept])
    monkeypatch.undo()
    r = _merge(capsys, recipe, out, "--resume")
    assert r.code == 0, r.err
    assert f"note: resuming: {len(kept)} of {n} shard(s) already written and verified" in r.err
    assert leftovers(tmp_path) == []


def _disk_full_at(
    monkeypatch: pytest.MonkeyPatch, name: str, where: Path, and_after: bool = False
) -> None:
    """The write of tensor ``name`` finds the disk full (and, with ``and_after``, every later
    write too, so that no shard can complete after it)."""
    real = ShardedWriter.write
    full = [False]

    def write(writer: ShardedWriter, tensor_name: str, *args: object) -> None:
        full[0] = full[0] or (and_after and tensor_name == name)
        if tensor_name == name or full[0]:
            raise OSError(errno.ENOSPC, "No space left on device", str(where))
        real(writer, tensor_name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(ShardedWriter, "write", write)


def test_failed_resume_run_says_its_finished_shards_are_kept(
    recipe: Path,
    plan: MergePlan,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The last tensor computed fails: every shard but the one holding it was finished.
    last = pipeline._tensors_to_compute(plan, set(), policy_from_environment())[-1].name
    out = tmp_path / "out"
    victim = partial_path(out) / "model.bin"
    _disk_full_at(monkeypatch, last, victim)
    r = _merge(capsys, recipe, out, "--resume")
    assert r.code == 1
    n = len(plan.shards)
    assert r.err_lines[-2:] == [
        f"error: disk full while writing {victim}",
        "hint: free space on that disk or choose another output folder; "
        f"{n - 1} of {n} shards are kept in {partial_path(out)}: once that is fixed, run the "
        "same command again with --resume to continue",
    ]
    journal = Journal.read(partial_path(out))
    assert journal is not None and len(journal["shards"]) == n - 1
    assert not out.exists()


@pytest.mark.parametrize("resume", [False, True], ids=["plain", "resume-nothing-finished"])
def test_failed_run_without_kept_shards_keeps_the_plain_hint(
    resume: bool,
    recipe: Path,
    plan: MergePlan,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Without --resume nothing stays whatever failed; with it, a failure at the first tensor
    # leaves nothing to continue from.
    order = pipeline._tensors_to_compute(plan, set(), policy_from_environment())
    name = order[-1 if not resume else 0].name
    out = tmp_path / "out"
    victim = tmp_path / "somewhere"
    _disk_full_at(monkeypatch, name, victim, and_after=True)
    r = _merge(capsys, recipe, out, *(["--resume"] if resume else []))
    assert r.code == 1
    assert r.err_lines[-2:] == [
        f"error: disk full while writing {victim}",
        "hint: free space on that disk or choose another output folder",
    ]
    assert not out.exists() and leftovers(tmp_path) == []
