"""The output folder: refuse dangerous destinations, write into a temporary folder beside it,
and rename into place only when everything is written.

The temporary folder is ``<parent>/.<name>.meldkit-partial``. It is ours alone (a lock keeps a
second run away from it while one is writing), so a later run may delete it, or resume from it
with ``--resume``; the destination itself is only ever replaced by a complete model, an occupied
destination only with ``--overwrite``, and an input folder never.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from meldkit.errors import OutputError, PublishRefused

__all__ = [
    "PartialFolder",
    "check_free_space",
    "check_output_folder",
    "partial_folder",
    "prepare_partial",
    "publish",
]

PARTIAL_SUFFIX = ".meldkit-partial"
OLD_SUFFIX = ".meldkit-old"


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_output_folder(out: Path, inputs: Iterable[Path], overwrite: bool) -> None:
    """Refuse an output folder that is an input, lies in one, holds one, or is occupied."""
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
    if target.name.endswith((PARTIAL_SUFFIX, OLD_SUFFIX)):
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
    if target.is_dir() and _non_empty(target) and not overwrite:
        raise OutputError(
            f"output folder {out} already exists and is not empty",
            hint="pass --overwrite to replace it, or choose another folder",
        )
    parent = target.parent
    if not parent.is_dir():
        raise OutputError(
            f"the parent folder of {out} does not exist", hint=f"create {parent} first"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(
            f"cannot write to {parent}",
            hint="check its permissions or choose another output folder",
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
    """The temporary folder of one run, locked (POSIX ``flock``) for as long as it is open.

    The lock is what makes deleting a leftover partial folder safe: a folder another running
    meldkit holds is refused instead of being pulled from under it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def lock(self) -> None:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory locks on folders
            self._fd = fd
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise OutputError(
                f"another meldkit run is writing {self.path}",
                hint="wait for it to finish, or stop it first",
            ) from None
        self._fd = fd

    def release(self) -> None:
        """Drop the lock; idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def remove(self) -> None:
        """Delete the folder and everything in it (the lock is released last)."""
        shutil.rmtree(self.path, ignore_errors=True)
        self.release()


def prepare_partial(out: Path, resume: bool) -> PartialFolder:
    """Create and lock the temporary folder; without ``resume`` a leftover is removed first."""
    tmp = partial_folder(out)
    if tmp.is_symlink() or (tmp.exists() and not tmp.is_dir()):
        tmp.unlink()  # never follow a link planted at our name
    partial = PartialFolder(tmp)
    try:
        if tmp.is_dir():
            partial.lock()  # refuses a folder another run is using
            if not resume:
                shutil.rmtree(tmp)
                partial.release()
        if not tmp.is_dir():
            tmp.mkdir()
            partial.lock()
    except OSError as exc:
        partial.release()
        raise OutputError(
            f"cannot create the temporary folder {tmp}: {exc.strerror or exc}",
            hint="check the permissions of the output's parent folder",
        ) from None
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
