"""The output folder: refuse dangerous destinations, write into a temporary folder beside it,
and rename into place only when everything is written.

Beside the destination ``<parent>/<name>`` a run keeps two things of its own:

* ``.<name>.meldkit-lock``: an exclusive ``flock`` held for the whole run, holding its pid, so
  a second merge of the same destination (``--resume`` included) is refused, naming the first.
  The kernel drops the lock when the process ends, even on ``kill -9``; a clean exit also
  deletes the file. It lives in :mod:`meldkit.execute.output_lock`.
* ``.<name>.meldkit-partial``: the temporary folder. Only the lock holder touches it, so a later
  run may delete it, or resume from it with ``--resume``.

Missing parent folders are created, as MergeKit does; only the final folder appears by rename.
A run that fails removes the parents it created that are still empty (ones that already
existed, or that something else filled meanwhile, stay). The destination is only ever replaced
by a complete model, an occupied destination only with ``--overwrite``, an input folder never.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from meldkit.errors import OutputError, PublishRefused
from meldkit.execute.output_lock import LOCK_SUFFIX as LOCK_SUFFIX
from meldkit.execute.output_lock import lock_path, release_lock, take_lock

__all__ = [
    "PartialFolder",
    "check_free_space",
    "check_output_folder",
    "lock_path",
    "partial_folder",
    "prepare_partial",
    "publish",
]

PARTIAL_SUFFIX = ".meldkit-partial"
OLD_SUFFIX = ".meldkit-old"


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_output_folder(out: Path, inputs: Iterable[Path], overwrite: bool) -> None:
    """Refuse an output folder that is an input, lies in one, holds one, or is occupied.

    Missing parents are fine (:func:`prepare_partial` creates them) when the nearest existing
    one is a writable folder; nothing is created here.
    """
    target = out.resolve()
    for folder in inputs:
        src = folder.resolve()
        if _inside(target, src):
            raise OutputError(
                f"output folder {out} is inside the input model folder {folder}",
                hint="choose an output folder outside every input model",
            )
        if _inside(src, target):
            raise OutputError(
                f"output folder {out} contains the input model folder {folder}",
                hint="choose another output folder; meldkit never deletes or overwrites an input",
            )
    if target.name.endswith((PARTIAL_SUFFIX, OLD_SUFFIX, LOCK_SUFFIX)):
        raise OutputError(
            f"output folder {out} has a name meldkit uses for its temporary folders",
            hint="choose another output folder",
        )
    if target.exists() and not target.is_dir():
        raise OutputError(
            f"output path {out} exists and is not a folder", hint="choose another output path"
        )
    if target.is_dir():
        _refuse_precious(out, target)
    _refuse_occupied(out, target, overwrite)
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent  # the folder mkdir -p would start from
    if not parent.is_dir():
        raise _not_a_folder(out, parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(
            f"cannot write to {parent}",
            hint="check its permissions or choose another output folder",
        )


def _not_a_folder(out: Path, parent: Path) -> OutputError:
    return OutputError(
        f"cannot create the output folder {out}: {parent} is not a folder",
        hint="choose an output path whose parents are folders (missing ones are created)",
    )


def _refuse_occupied(out: Path, target: Path, overwrite: bool) -> None:
    if target.is_dir() and _non_empty(target) and not overwrite:
        raise OutputError(
            f"output folder {out} already exists and is not empty",
            hint="pass --overwrite to replace it, or choose another folder",
        )


def _non_empty(folder: Path) -> bool:
    try:
        with os.scandir(folder) as it:
            return any(True for _ in it)
    except OSError as exc:
        raise OutputError(
            f"cannot read the output folder {folder}: {exc.strerror or exc}"
        ) from None


def _refuse_precious(out: Path, target: Path) -> None:
    """The output folder is replaced as a whole (renamed away, or deleted with --overwrite), so
    never use the file-system root, the home folder, or the current folder (or one holding it).

    A typo such as ``meldkit merge r.yml ~ --overwrite`` must not cost a home directory.
    """
    precious = {Path(target.anchor)}
    for candidate in (Path.home, Path.cwd):
        try:
            precious.add(candidate().resolve())
        except (OSError, RuntimeError):
            continue
    cwd = None
    try:
        cwd = Path.cwd().resolve()
    except OSError:
        pass
    if target in precious or (cwd is not None and target in cwd.parents):
        raise OutputError(
            f"refusing to use {out} as the output folder: it is the file-system root, your home "
            "folder, or holds the current folder",
            hint="give a dedicated output folder, e.g. ./merged (meldkit replaces it as a whole)",
        )


def check_free_space(out: Path, needed: int) -> None:
    """Refuse to start when the output's file system cannot hold ``needed`` more bytes."""
    parent = out.resolve().parent
    try:
        free = shutil.disk_usage(parent).free
    except OSError:
        return  # cannot tell (some network file systems): the writer still reports a full disk
    if free < needed:
        from meldkit.io.sizes import format_size

        raise OutputError(
            f"not enough free space in {parent}: the merge writes {format_size(needed)} but only "
            f"{format_size(free)} is free",
            hint="free some space or choose an output folder on another disk",
        )


def partial_folder(out: Path) -> Path:
    """``<parent>/.<name>.meldkit-partial``: where a run of ``out`` writes before publishing."""
    target = out.resolve()
    return target.parent / f".{target.name}{PARTIAL_SUFFIX}"


class PartialFolder:
    """The temporary folder of one run, with the run's lock on the destination.

    ``created`` lists the parent folders this run made (outermost first): :meth:`release`
    removes those still empty, so a failed run leaves the tree as it found it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.created: list[Path] = []
        self._lock: tuple[int, Path] | None = None

    def lock(self, out: Path) -> None:
        """Create the missing parents of ``out`` and take its lock, or raise :class:`OutputError`
        naming the run that holds it."""

        def make_parents(folder: Path) -> None:
            self.created += _make_parents(out, folder)

        self._lock = take_lock(out, make_parents)

    def release(self) -> None:
        """Drop the lock (deleting its file) and the empty parents this run created; idempotent."""
        if self._lock is not None:
            (fd, lock), self._lock = self._lock, None
            release_lock(fd, lock)
        while self.created:
            try:
                self.created[-1].rmdir()  # fails, as it should, once anything is inside
            except OSError:
                break
            self.created.pop()
        self.created.clear()

    def remove(self) -> None:
        """Delete the folder and everything in it (the lock is released last)."""
        shutil.rmtree(self.path, ignore_errors=True)
        self.release()


def _make_parents(out: Path, folder: Path) -> list[Path]:
    """``mkdir -p folder``; returns the folders this call made, outermost first."""
    missing: list[Path] = []
    while not folder.is_dir() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    created: list[Path] = []
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            if path.is_dir():
                continue  # made by a merge next door at the same moment: not ours to remove
            raise _not_a_folder(out, path) from None
        except OSError as exc:
            raise OutputError(
                f"cannot create the folder {path} for {out}: {exc.strerror or exc}",
                hint=f"check the permissions of {path.parent}, or choose another output folder",
            ) from None
        created.append(path)
    return created


def prepare_partial(out: Path, resume: bool, overwrite: bool | None = None) -> PartialFolder:
    """Lock ``out`` (creating its missing parents) and create the temporary folder; without
    ``resume`` a leftover is removed first.

    With ``overwrite`` given, the destination is checked again under the lock: a merge that
    held it may just have published there.
    """
    tmp = partial_folder(out)
    partial = PartialFolder(tmp)
    try:
        partial.lock(out)
        if overwrite is not None:
            _refuse_occupied(out, out.resolve(), overwrite)
        if tmp.is_symlink() or (tmp.exists() and not tmp.is_dir()):
            tmp.unlink()  # never follow a link planted at our name
        if tmp.is_dir() and not resume:
            shutil.rmtree(tmp)
        if not tmp.is_dir():
            tmp.mkdir()
    except OSError as exc:
        partial.release()
        raise OutputError(
            f"cannot create the temporary folder {tmp}: {exc.strerror or exc}",
            hint="check the permissions of the output's parent folder",
        ) from None
    except BaseException:
        partial.release()
        raise
    return partial


def publish(tmp: Path, out: Path, overwrite: bool = True) -> None:
    """Move the finished temporary folder to ``out``.

    An old output is renamed aside first and deleted only after the new one is in place, so at
    every instant either the old or the new complete model exists under a meldkit-owned name.
    An empty destination folder is simply replaced; one that filled up during the merge is
    replaced only with ``overwrite`` (otherwise :class:`~meldkit.errors.PublishRefused`,
    keeping ``tmp``).
    """
    target = out.resolve()
    old: Path | None = None
    if target.is_dir() and not _non_empty(target):
        target.rmdir()
    elif target.exists() or target.is_symlink():
        if not overwrite:
            raise PublishRefused(
                f"{out} was created by something else while merging; it was left alone",
                hint=f"the finished model is in {tmp}: move it into place yourself, or run "
                "again with --overwrite",
                kept=tmp,
            )
        old = target.parent / f".{target.name}{OLD_SUFFIX}"
        if old.is_symlink() or old.is_file():
            old.unlink()
        elif old.exists():
            shutil.rmtree(old)
        os.rename(target, old)
    try:
        os.rename(tmp, target)
    except OSError:
        if old is not None:
            os.rename(old, target)  # put the old output back rather than leave none
        raise
    _fsync_dir(target.parent)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()


def _fsync_dir(folder: Path) -> None:
    """Make the renames durable (POSIX only)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
