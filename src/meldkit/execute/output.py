"""The output folder: refuse dangerous destinations, write into a temporary folder beside it,
and rename into place only when everything is written.

The temporary folder is ``<parent>/.<name>.meldkit-partial``. It is ours alone, so a later run
may delete it (or resume from it with ``--resume``); the destination itself is only ever
replaced by a complete model, and an occupied destination only with ``--overwrite``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from meldkit.errors import OutputError

__all__ = ["check_output_folder", "partial_folder", "prepare_partial", "publish"]


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
    if target.exists() and not target.is_dir():
        raise OutputError(f"output path {out} exists and is not a folder", hint="choose another output path")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise OutputError(
            f"output folder {out} already exists and is not empty",
            hint="pass --overwrite to replace it, or choose another folder",
        )
    parent = target.parent
    if not parent.is_dir():
        raise OutputError(f"the parent folder of {out} does not exist", hint=f"create {parent} first")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write to {parent}", hint="check its permissions or choose another output folder")


def partial_folder(out: Path) -> Path:
    target = out.resolve()
    return target.parent / f".{target.name}.meldkit-partial"


def prepare_partial(out: Path, resume: bool) -> Path:
    """Create the temporary folder; without ``resume`` a leftover from an earlier run is removed."""
    tmp = partial_folder(out)
    if tmp.exists() and not resume:
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    return tmp


def publish(tmp: Path, out: Path) -> None:
    """Move the finished temporary folder to ``out``, replacing an old output atomically enough:
    the old folder is renamed aside first and deleted only after the new one is in place."""
    target = out.resolve()
    old: Path | None = None
    if target.exists():
        old = target.parent / f".{target.name}.meldkit-old"
        if old.exists():
            shutil.rmtree(old)
        os.rename(target, old)
    os.rename(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
