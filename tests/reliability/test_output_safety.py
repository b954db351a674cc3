"""Output safety: full disks, occupied or dangerous destinations, the output lock, inputs never
touched."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from meldkit.errors import OutputError
from meldkit.execute.journal import JOURNAL_NAME
from meldkit.execute.output import lock_path, prepare_partial
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

SHARD = "8KB"
LOCK_HINT = "wait for it to finish or stop it, or merge into another output folder"


@pytest.fixture(scope="module")
def recipe(family: Family, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_recipe(
        tmp_path_factory.mktemp("safety-recipe"), linear_recipe(family.ft1, family.ft2)
    )


@pytest.fixture(scope="module")
def reference(recipe: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    from meldkit.cli.main import main

    out = tmp_path_factory.mktemp("safety-reference") / "out"
    assert main(["merge", str(recipe), str(out), "--out-shard-size", SHARD, "--quiet"]) == 0
    return folder_bytes(out)


def _fill_disk_after(monkeypatch: pytest.MonkeyPatch, writes: int) -> None:
    """Make every positional write after the first ``writes`` fail as on a full disk."""
    real = os.pwrite
    count = [0]

    def pwrite(fd: int, data: object, offset: int) -> int:
        count[0] += 1
        if count[0] > writes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data, offset)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "pwrite", pwrite)


def test_full_disk_removes_temporary_files(
    recipe: Path,
    family: Family,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inputs = snapshot(*family.folders)
    _fill_disk_after(monkeypatch, 12)
    out = tmp_path / "out"
    r = run_cli(capsys, "merge", recipe, out, "--out-shard-size", SHARD, "--quiet")
    assert r.code == 1, r.err
    assert r.err_lines[0].startswith("error: disk full while writing ")
    assert r.err_lines[1] == "hint: free space on that disk or choose another output folder"
    assert len(r.err_lines) == 2
    assert not out.exists() and leftovers(tmp_path) == []
    assert snapshot(*family.folders) == inputs


def test_full_disk_with_resume_keeps_finished_shards_and_resumes(
    recipe: Path,
    reference: dict[str, bytes],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        _fill_disk_after(m, 20)
        r = run_cli(capsys, "merge", recipe, out, "--out-shard-size", SHARD, "--quiet", "--resume")
    assert r.code == 1 and "disk full" in r.err_lines[0]
    assert not out.exists()
    kept = sorted(p.name for p in partial_path(out).iterdir())
    assert JOURNAL_NAME in kept and len(kept) >= 2  # the journal and at least one finished shard
    assert all(
        partial_path(out).joinpath(k).read_bytes() == reference[k]
        for k in kept
        if k != JOURNAL_NAME
    )
    # Space was freed: --resume finishes the job.
    r = run_cli(capsys, "merge", recipe, out, "--out-shard-size", SHARD, "--resume")
    assert r.code == 0, r.err
    assert f"note: resuming: {len(kept) - 1} of" in r.err
    assert folder_bytes(out) == reference and leftovers(tmp_path) == []


def test_full_disk_while_writing_metadata(
    recipe: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import meldkit.execute.runner as runner

    def full(src: object, dst: object, *a: object, **kw: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))

    monkeypatch.setattr(runner.shutil, "copyfile", full)
    r = run_cli(capsys, "merge", recipe, tmp_path / "out", "--quiet")
    assert r.code == 1
    assert (
        r.err_lines[0].startswith("error: disk full while writing ")
        and "generation_config.json" in r.err_lines[0]
    )
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 40 KiB tmpfs (a real full disk), where the system allows mounting one."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=40k", "tmpfs", str(mount)],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        pytest.skip("cannot run mount")
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs privileges)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=10)


def test_real_full_disk(
    recipe: Path,
    tiny_tmpfs: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tiny_tmpfs / "out"
    # First the check before computing: the merge needs more than the disk has.
    r = run_cli(capsys, "merge", recipe, out, "--quiet")
    assert r.code == 2 and r.err_lines[0].startswith(
        f"error: not enough free space in {tiny_tmpfs}"
    )
    assert os.listdir(tiny_tmpfs) == []
    # Then the real thing, as when the disk fills up during the merge.
    import meldkit.execute.runner as runner

    monkeypatch.setattr(runner, "check_free_space", lambda out, needed: None)
    r = run_cli(capsys, "merge", recipe, out, "--quiet")
    assert r.code == 1 and "disk full while writing" in r.err_lines[0], r.err
    assert os.listdir(tiny_tmpfs) == []


def test_not_enough_space_is_refused_before_computing(
    recipe: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import meldkit.execute.output as output

    monkeypatch.setattr(
        output.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 1000)
    )  # type: ignore[attr-defined]
    r = run_cli(capsys, "merge", recipe, tmp_path / "out", "--quiet")
    assert r.code == 2
    assert r.err_lines[0].startswith(
        f"error: not enough free space in {tmp_path}: the merge writes "
    )
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_never_writes_into_inputs(
    recipe: Path, family: Family, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = snapshot(*family.folders)
    link = tmp_path / "link"
    link.symlink_to(family.ft1)
    r = run_cli(capsys, "merge", recipe, link, "--overwrite")
    assert r.code == 2 and "inside the input model folder" in r.err_lines[0]
    r = run_cli(capsys, "merge", recipe, family.ft1.parent, "--overwrite")
    assert r.code == 2 and "contains the input model folder" in r.err_lines[0]
    # A link planted where the temporary folder goes is removed, not followed.
    out = tmp_path / "out"
    partial_path(out).symlink_to(family.ft2, target_is_directory=True)
    assert run_cli(capsys, "merge", recipe, out, "--quiet").code == 0
    assert snapshot(*family.folders) == inputs and leftovers(tmp_path) == []


def test_overwrite_replaces_only_with_flag_and_never_precious_folders(
    recipe: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert run_cli(capsys, "merge", recipe, out, "--quiet").code == 2
    assert (out / "notes.txt").read_text() == "mine"
    assert run_cli(capsys, "merge", recipe, out, "--quiet", "--overwrite").code == 0
    assert not (out / "notes.txt").exists() and (out / "model.safetensors").is_file()
    assert run_cli(capsys, "merge", recipe, out, "--quiet", "--overwrite").code == 0  # a re-run
    assert leftovers(tmp_path) == []
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "precious.txt").write_text("keep")
    monkeypatch.chdir(work / "sub")
    for target in (".", ".."):
        r = run_cli(capsys, "merge", recipe, target, "--overwrite")
        assert r.code == 2 and r.err_lines[0].startswith("error: refusing to use"), r.err
    assert (work / "precious.txt").read_text() == "keep"
    # An empty existing folder needs no --overwrite.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli(capsys, "merge", recipe, empty, "--quiet").code == 0


def test_a_second_run_cannot_take_over_a_running_ones_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = prepare_partial(out, resume=False)
    try:
        for resume in (False, True):
            with pytest.raises(OutputError) as refused:
                prepare_partial(out, resume=resume)
            assert refused.value.message == (
                f"another meldkit merge (pid {os.getpid()}) is writing {out}"
            )
            assert refused.value.hint == LOCK_HINT
        assert first.path.is_dir() and lock_path(out).read_text() == f"{os.getpid()}\n"
        assert sorted(os.listdir(tmp_path)) == [".out.meldkit-lock", ".out.meldkit-partial"]
    finally:
        first.remove()
    assert os.listdir(tmp_path) == []  # the lock file goes with the lock
    second = prepare_partial(out, resume=False)
    second.remove()
    assert os.listdir(tmp_path) == []


def test_a_lock_held_before_its_pid_is_written_is_still_refused(tmp_path: Path) -> None:
    import fcntl

    out = tmp_path / "out"
    fd = os.open(lock_path(out), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(OutputError) as refused:
            prepare_partial(out, resume=False)
        assert refused.value.message == f"another meldkit merge is writing {out}"
    finally:
        os.close(fd)
    assert os.listdir(tmp_path) == [".out.meldkit-lock"]  # not ours: left alone


def test_a_stale_or_planted_lock_file_is_taken_over(family: Family, tmp_path: Path) -> None:
    out = tmp_path / "out"
    lock_path(out).write_text("12345\n")  # left by a run killed with kill -9: nobody holds it
    partial = prepare_partial(out, resume=False)
    assert lock_path(out).read_text() == f"{os.getpid()}\n"
    partial.remove()
    assert os.listdir(tmp_path) == []
    # A link planted at the lock's name is removed, not written through.
    inputs = snapshot(*family.folders)
    lock_path(out).symlink_to(family.ft1 / "config.json")
    partial = prepare_partial(out, resume=False)
    assert not lock_path(out).is_symlink()
    partial.remove()
    assert os.listdir(tmp_path) == [] and snapshot(*family.folders) == inputs


def test_an_output_published_meanwhile_is_seen_under_the_lock(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"x")  # what a merge that just finished left
    with pytest.raises(OutputError) as refused:
        prepare_partial(out, resume=False, overwrite=False)
    assert refused.value.message == f"output folder {out} already exists and is not empty"
    assert os.listdir(tmp_path) == ["out"]
    prepare_partial(out, resume=False, overwrite=True).remove()
    assert os.listdir(tmp_path) == ["out"]


def test_output_names_meldkit_uses_are_refused(
    recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("x.meldkit-partial", "x.meldkit-old", "x.meldkit-lock"):
        r = run_cli(capsys, "merge", recipe, tmp_path / name)
        assert r.code == 2
        assert r.err_lines == [
            f"error: output folder {tmp_path / name} has a name meldkit uses for its "
            "temporary folders",
            "hint: choose another output folder",
        ]
    assert os.listdir(tmp_path) == []


def test_destination_filled_during_the_merge_is_left_alone(
    recipe: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import meldkit.execute.runner as runner

    out = tmp_path / "out"
    real = runner._write_metadata

    def intruder(*a: object, **kw: object) -> None:
        real(*a, **kw)  # type: ignore[arg-type]
        out.mkdir()
        (out / "theirs.txt").write_text("x")

    monkeypatch.setattr(runner, "_write_metadata", intruder)
    r = run_cli(capsys, "merge", recipe, out, "--quiet")
    assert r.code == 1
    assert (
        r.err_lines[0]
        == f"error: {out} was created by something else while merging; it was left alone"
    )
    assert str(partial_path(out)) in r.err_lines[1]
    assert sorted(os.listdir(out)) == ["theirs.txt"]
    assert (partial_path(out) / "model.safetensors").is_file()
