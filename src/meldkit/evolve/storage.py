"""The search's folder (``--storage DIR``): what is written there and how it is read back.

- ``history.jsonl``: one line per evaluated candidate, appended as each finishes (index,
  generation, genes, their values, fitness and every term's score). Nothing in it depends on
  timing, so a resumed search ends with the same file as an uninterrupted one.
- ``state.json``: rewritten atomically after every generation: the search file's hash, the
  generations and evaluations done, the elapsed time and the best candidate so far.
- ``search.yaml``: the search file as it was given, for the record.

The optimizer's state is not stored: it is rebuilt by replaying the history (see
:mod:`meldkit.evolve.optimizers`), so nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from meldkit.errors import OptionError, OutputError

__all__ = ["Storage", "atomic_write", "config_hash"]

STATE_VERSION = 1


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file renamed into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def config_hash(source_text: str, extra: dict[str, Any]) -> str:
    """What makes two searches the same search: the search file's text and ``extra``."""
    payload = json.dumps({"source": source_text, **extra}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class Storage:
    """The files of one search folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.history_path = self.folder / "history.jsonl"
        self.state_path = self.folder / "state.json"

    def open(self, digest: str, source_text: str, restart: bool) -> dict[int, dict[str, Any]]:
        """Create the folder or reopen it; returns the recorded candidates by index.

        A folder holding another search (another hash) is refused unless ``restart``, which
        starts it afresh."""
        if self.folder.exists() and not self.folder.is_dir():
            raise OutputError(f"--storage {self.folder} is a file, not a folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        state = self.read_state()
        if state is not None and state.get("config_hash") != digest and not restart:
            raise OptionError(
                f"{self.folder} holds another search (its search file or options differ)",
                hint="use another --storage folder, or --restart to start this one afresh",
            )
        if restart:
            for path in (self.history_path, self.state_path):
                path.unlink(missing_ok=True)
        atomic_write(self.folder / "search.yaml", source_text)
        return self.read_history()

    def read_state(self) -> dict[str, Any] | None:
        if not self.state_path.is_file():
            return None
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise OptionError(
                f"{self.state_path} cannot be read ({exc})",
                hint="use --restart to start the search afresh",
            ) from None
        return state if isinstance(state, dict) else None

    def read_history(self) -> dict[int, dict[str, Any]]:
        """Recorded candidates by index; a last line cut short by a kill is ignored."""
        records: dict[int, dict[str, Any]] = {}
        if not self.history_path.is_file():
            return records
        lines = self.history_path.read_text(encoding="utf-8").splitlines()
        kept = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                break  # a partial last line
            records[int(record["index"])] = record
            kept.append(line)
        if len(kept) != len(lines):  # drop the torn line so appends stay valid JSON lines
            atomic_write(self.history_path, "".join(f"{k}\n" for k in kept))
        return records

    def append(self, record: dict[str, Any]) -> None:
        with open(self.history_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def write_state(self, state: dict[str, Any]) -> None:
        atomic_write(self.state_path, json.dumps({"version": STATE_VERSION, **state}, indent=1))
