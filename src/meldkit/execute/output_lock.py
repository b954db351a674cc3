"""The output lock: one merge at a time per output folder.

A run of ``<parent>/<name>`` holds an exclusive ``flock`` on ``<parent>/.<name>.meldkit-lock``
for its whole length, and writes its pid into the file. While it holds the lock no other run of
the same destination (``--resume`` included) may start: the second one is refused with an
:class:`~meldkit.errors.OutputError` naming the pid of the first. Only the holder touches the
temporary folder beside the destination, so whoever holds the lock may delete or resume it.

Why ``flock`` rather than a pid file or ``O_EXCL``: the kernel drops the lock when its process
ends, however it ends (``kill -9`` or a crash included), so a dead run never leaves a lock that
has to be broken by hand or by guessing whether a pid is still alive. A lock file left behind is
therefore simply taken over: it is opened and locked again. A clean exit deletes the file while
still holding the lock, and a run that locked a file deleted under it this way notices (the file
at the name is no longer the one it holds) and takes the new one instead.

Where ``flock`` is missing (some network file systems) the run goes on unlocked, as MergeKit
does; on Windows there is no ``flock`` at all.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

from meldkit.errors import OutputError

__all__ = ["LOCK_SUFFIX", "lock_path", "release_lock", "take_lock"]

LOCK_SUFFIX = ".meldkit-lock"
_LOCK_TRIES = 20  # a lock file deleted under us by its finishing holder is simply made again


def lock_path(out: Path) -> Path:
    """``<parent>/.<name>.meldkit-lock``: the lock file a run of ``out`` holds while it runs."""
    target = out.resolve()
    return target.parent / f".{target.name}{LOCK_SUFFIX}"


def take_lock(out: Path, make_folder: Callable[[Path], object]) -> tuple[int, Path]:
    """Take the lock of ``out``; returns the fd holding it and the lock file's path.

    ``make_folder(folder)`` is called before every try to create the lock's folder: a run of a
    neighbouring output that just failed may have removed a parent it had created. Raises
    :class:`OutputError` naming the run that holds the lock.
    """
    target = lock_path(out)
    for _ in range(_LOCK_TRIES):
        make_folder(target.parent)
        fd = _try_lock(out, target)
        if fd is not None:
            return fd, target
    raise OutputError(
        f"cannot lock {target}: it keeps disappearing",
        hint="something is deleting files beside the output folder; stop it and retry",
    )


def release_lock(fd: int, path: Path) -> None:
    """Delete the lock file (when it is still ours) and drop the lock."""
    if _same_file(fd, path):
        # Deleted while still locked, so a run that opened it meanwhile sees it replaced.
        path.unlink(missing_ok=True)
    os.close(fd)


def _try_lock(out: Path, path: Path) -> int | None:
    """An fd holding the exclusive lock of ``path``; None when the file vanished meanwhile."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no flock; one merge per folder is on you
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    if path.is_symlink():
        path.unlink()  # never write through a link planted at our name
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    try:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | nofollow, 0o644)
        except PermissionError:
            fd = os.open(path, os.O_RDONLY | nofollow)  # another user's: a read-only fd locks too
    except FileNotFoundError:
        return None  # a parent we rely on was removed by a run that just failed: make it again
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return _write_pid(fd)  # a file system without flock: run unlocked, as MergeKit does
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        who = f" (pid {holder})" if holder.isdigit() else ""
        raise OutputError(
            f"another meldkit merge{who} is writing {out}",
            hint="wait for it to finish or stop it, or merge into another output folder",
        ) from None
    if not _same_file(fd, path):
        os.close(fd)  # locked a file its last holder deleted on the way out: take the new one
        return None
    return _write_pid(fd)


def _write_pid(fd: int) -> int:
    """Record who holds the lock, for the message a second run shows (best effort)."""
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    except OSError:
        pass  # a read-only fd: the lock works, the message just cannot name the pid
    return fd


def _same_file(fd: int, path: Path) -> bool:
    try:
        st, cur = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (cur.st_dev, cur.st_ino)
