"""Saying why a local model or LoRA path was not found, before any hub lookup is described.

A recipe's relative paths are resolved against the current directory, as MergeKit does. When
one does not exist, the user needs the absolute path that was tried, a close sibling that does
exist (``models/ft2`` for ``models/ft22``), and, when the recipe sits elsewhere, whether the
path exists beside the recipe (a correct recipe run from another directory).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path

from meldkit.errors import InputError

__all__ = ["MissingLocal", "describe_missing", "close_sibling"]

PATH_FIX = "check the path in the recipe (paths are relative to the current directory)"


@dataclass(frozen=True)
class MissingLocal:
    """A path with no local folder: what to say about it, and how to fix it."""

    message: str  # "model folder 'x' does not exist (resolved to ...)"
    fix: str  # how to fix it if a local folder was meant
    revision: str | None = None

    def error(self, hub_found: str | None = None, hub_fix: str | None = None) -> InputError:
        """The error, with what the hub lookup found (None: there was no lookup)."""
        if hub_found is None:
            return InputError(self.message, hint=self.fix)
        at = f" at revision '{self.revision}'" if self.revision else ""
        hint = f"{self.fix}; {hub_fix}" if hub_fix else self.fix
        return InputError(f"{self.message}, and as a hub id{at}: {hub_found}", hint=hint)


def close_sibling(resolved: Path) -> str | None:
    """The name of the existing folder beside ``resolved`` closest to its name (ignoring
    case), or None when none is close."""
    try:
        names = [p.name for p in resolved.parent.iterdir() if p.is_dir()]
    except OSError:  # no parent folder, or one we may not list
        return None
    by_lower = {n.lower(): n for n in sorted(names, reverse=True) if not n.startswith(".")}
    close = difflib.get_close_matches(resolved.name.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[close[0]] if close else None


def _written_like(path: str, name: str) -> str:
    """``path`` with its last component replaced by ``name``, as the user wrote the rest."""
    head = os.path.dirname(path.rstrip("/\\"))
    return os.path.join(head, name) if head else name


def describe_missing(
    path: str, kind: str = "model", recipe_dir: Path | None = None, revision: str | None = None
) -> MissingLocal:
    """Describe the missing local folder ``path`` (``kind`` "model" or "lora")."""
    what = "LoRA folder" if kind == "lora" else "model folder"
    expanded = os.path.expanduser(path)
    resolved = Path(os.path.abspath(expanded))
    notes = []
    if os.path.normpath(path) != str(resolved):  # relative, or with ~
        notes.append(f"resolved to {resolved}")
    sibling = close_sibling(resolved)
    if sibling is not None:
        notes.append(f"did you mean '{_written_like(path, sibling)}'?")
    fix = PATH_FIX
    beside = _beside_recipe(expanded, recipe_dir)
    if beside is not None:
        notes.append(f"{beside} exists beside the recipe")
        fix = (
            f"run meldkit from {recipe_dir} (paths are relative to the current directory), "
            f"or write the path as {beside}"
        )
    detail = f" ({'; '.join(notes)})" if notes else ""
    return MissingLocal(f"{what} '{path}' does not exist{detail}", fix, revision)


def _beside_recipe(expanded: str, recipe_dir: Path | None) -> Path | None:
    if recipe_dir is None or os.path.isabs(expanded):
        return None
    candidate = Path(os.path.abspath(recipe_dir / expanded))
    return candidate if candidate.is_dir() else None
