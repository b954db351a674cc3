"""Missing parents of the output folder: created as MergeKit does, still published atomically.

``meldkit merge r.yaml runs/today/merged`` makes ``runs/today``, writes beside the final folder
(``.merged.meldkit-partial``, locked by ``.merged.meldkit-lock``) and renames only ``merged``
into place. A run that fails leaves the tree as it found it: the parents it made are removed
when still empty; nothing is ever created inside an input folder.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tests.reliability.helpers import folder_bytes, linear_recipe, run_cli, write_recipe


@pytest.fixture(scope="module")
def recipe(llama_family: tuple[Path, list[Path]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, (ft1, ft2) = llama_family
    return write_recipe(tmp_path_factory.mktemp("parents-recipe"), linear_recipe(ft1, ft2))


@pytest.fixture(scope="module")
def reference(recipe: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    from meldkit.cli.main import main

    out = tmp_path_factory.mktemp("parents-reference") / "out"
    assert main(["merge", str(recipe), str(out), "--quiet"]) == 0
    return folder_bytes(out)


def _tree(root: Path) -> list[str]:
    """Every folder and file under ``root``, relative, hidden ones included."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _disk_full(monkeypatch: pytest.MonkeyPatch) -> None:
    def pwrite(fd: int, data: object, offset: int) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", pwrite)


def test_missing_parents_are_created_and_only_the_output_appears(
    recipe: Path,
    reference: dict[str, bytes],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import meldkit.execute.runner as runner

    out = tmp_path / "runs" / "today" / "merged"
    during: list[list[str]] = []
    real = runner._write_metadata

    def spy(*a: object, **kw: object) -> None:
        during.append(sorted(os.listdir(out.parent)))
        during.append([(out.parent / ".merged.meldkit-lock").read_text()])
        real(*a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(runner, "_write_metadata", spy)
    r = run_cli(capsys, "merge", recipe, out, "--quiet")
    assert r.code == 0, r.err
    assert r.err == ""
    # While merging: the temporary folder and the lock sit beside the final folder, not in it.
    assert during == [[".merged.meldkit-lock", ".merged.meldkit-partial"], [f"{os.getpid()}\n"]]
    assert folder_bytes(out) == reference
    assert [p for p in _tree(tmp_path) if "/merged/" not in p] == [
        "runs",
        "runs/today",
        "runs/today/merged",
    ]


def test_a_planning_failure_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-model"
    bad = write_recipe(tmp_path, linear_recipe(missing, missing))
    r = run_cli(capsys, "merge", bad, tmp_path / "runs" / "today" / "merged")
    assert r.code == 2 and r.err_lines[0].startswith("error: ") and str(missing) in r.err
    assert _tree(tmp_path) == ["recipe.yaml"]


def test_a_failed_merge_removes_the_parents_it_created(
    recipe: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "keep.txt").write_text("mine")  # a parent that existed stays, with its files
    _disk_full(monkeypatch)
    r = run_cli(capsys, "merge", recipe, runs / "a" / "b" / "merged", "--quiet")
    assert r.code == 1 and r.err_lines[0].startswith("error: disk full while writing "), r.err
    assert _tree(tmp_path) == ["runs", "runs/keep.txt"]


def test_a_created_parent_that_filled_up_meanwhile_stays(
    recipe: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import meldkit.execute.runner as runner

    out = tmp_path / "runs" / "today" / "merged"
    real = runner._write_metadata

    def neighbour(*a: object, **kw: object) -> None:
        (tmp_path / "runs" / "notes.txt").write_text("someone else's")
        real(*a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(runner, "_write_metadata", neighbour)
    _disk_full(monkeypatch)
    r = run_cli(capsys, "merge", recipe, out, "--quiet")
    assert r.code == 1, r.err
    # runs/today was ours and is empty again: removed; runs now holds a file that is not ours.
    assert _tree(tmp_path) == ["runs", "runs/notes.txt"]


def test_nothing_is_created_inside_an_input_folder(
    recipe: Path,
    llama_family: tuple[Path, list[Path]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, (ft1, _) = llama_family
    before = _tree(ft1)
    out = ft1 / "runs" / "today" / "merged"
    r = run_cli(capsys, "merge", recipe, out, "--overwrite")
    assert r.code == 2
    assert r.err_lines == [
        f"error: output folder {out} is inside the input model folder {ft1}",
        "hint: choose an output folder outside every input model",
    ]
    assert _tree(ft1) == before


def test_a_parent_that_is_a_file_is_refused_before_computing(
    recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "runs").write_text("not a folder")
    out = tmp_path / "runs" / "today" / "merged"
    r = run_cli(capsys, "merge", recipe, out)
    assert r.code == 2
    assert r.err_lines == [
        f"error: cannot create the output folder {out}: {tmp_path / 'runs'} is not a folder",
        "hint: choose an output path whose parents are folders (missing ones are created)",
    ]
    assert _tree(tmp_path) == ["runs"]


def test_an_unwritable_existing_ancestor_is_refused_before_computing(
    recipe: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import meldkit.execute.output as output

    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    # A real chmod does not stop root (these tests may run as root), so deny it here.
    monkeypatch.setattr(
        output.os, "access", lambda p, mode, **kw: Path(p) != locked and real(p, mode, **kw)
    )
    r = run_cli(capsys, "merge", recipe, locked / "a" / "merged")
    assert r.code == 2
    assert r.err_lines == [
        f"error: cannot write to {locked}",
        "hint: check its permissions or choose another output folder",
    ]
    assert _tree(tmp_path) == ["locked"]


def test_run_merge_creates_parents_too(recipe: Path, tmp_path: Path) -> None:
    import meldkit

    meldkit.run_merge(recipe, tmp_path / "x" / "y", quiet=True)
    assert (tmp_path / "x" / "y" / "model.safetensors").is_file()
    assert os.listdir(tmp_path) == ["x"] and os.listdir(tmp_path / "x") == ["y"]
