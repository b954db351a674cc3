"""The resume journal: which output shards of an interrupted merge are complete and intact.

A merge writes into a temporary folder (see :mod:`meldkit.execute.output`). Beside the shards it
keeps ``.meldkit-journal.json``::

    {"format": "meldkit-journal", "version": 2,
     "fingerprint": "<sha256 of everything that decides the output bytes>",
     "shards": {"model-00001-of-00004.safetensors": {"size": 123, "crc32": "..."}}}

A shard is entered only after the writer has fsynced and closed it, and the journal itself is
replaced atomically, so after any interruption (Ctrl-C, SIGKILL, a power cut) every entry names a
shard that was complete. ``--resume`` reuses a temporary folder only when its fingerprint equals
the new run's, and each shard only when its size and CRC-32 still match: anything else is
rewritten. (CRC-32 detects damage, which is all a journal needs to catch, at twice the speed
of SHA-256; hashing runs on its own thread while the merge goes on.) The journal is deleted
before the folder is published, so outputs never contain it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import threading
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meldkit.execute.policy import DEFAULT_POLICY
from meldkit.io.writer import fsync_dir

if TYPE_CHECKING:
    from meldkit.plan.planner import MergePlan

__all__ = ["JOURNAL_NAME", "Journal", "plan_fingerprint", "crc32_file"]

JOURNAL_NAME = ".meldkit-journal.json"
_FORMAT = "meldkit-journal"
_VERSION = 2  # 2: shards carry a CRC-32 instead of a SHA-256


def crc32_file(
    path: Path,
    stop: threading.Event | None = None,
    chunk_bytes: int = DEFAULT_POLICY.hash_chunk_bytes,
) -> str | None:
    """Hex CRC-32 of a file, read ``chunk_bytes`` at a time; None if ``stop`` is set meanwhile."""
    crc = 0
    with open(path, "rb") as fh:
        while True:
            if stop is not None and stop.is_set():
                return None
            block = fh.read(chunk_bytes)
            if not block:
                break
            crc = zlib.crc32(block, crc)
    return f"{crc:08x}"


def _folder_stats(folder: Path) -> list[tuple[str, int, int]]:
    """(name, size, mtime_ns) of every file at the top of ``folder``: weights, config, tokenizer.

    Sizes and modification times stand in for contents: hashing many GB of inputs to decide
    whether a resume is safe would cost as much as a large part of the merge itself.
    """
    stats = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return []
    for entry in entries:
        try:
            if entry.is_file():
                st = entry.stat()
                stats.append((entry.name, st.st_size, st.st_mtime_ns))
        except OSError:
            continue
    return stats


def plan_fingerprint(plan: MergePlan, device: str, seed: int | None) -> str:
    """A hash of everything that decides the output shards' bytes.

    The recipe text, the plan options, meldkit's version, the device kind (CPU and GPU math may
    round differently), the seed, every shard header (names, dtypes, shapes, layout) and the
    size and mtime of every file in every input folder. Options that only affect the metadata
    files (tokenizer, model card) are left out: those files are rewritten on every run anyway.
    """
    from meldkit import __version__

    inputs: dict[str, Any] = {}
    for key, model in sorted(plan.models.items()):
        inputs[key] = {
            "folder": str(model.folder.resolve()),
            "files": _folder_stats(model.folder),
            "lora": _folder_stats(model.lora_folder) if model.lora_folder else None,
        }
    doc = {
        "meldkit": __version__,
        "recipe": plan.config.source_text
        if plan.config.source_text is not None
        else repr(plan.config),
        "options": {k: repr(v) for k, v in sorted(dataclasses.asdict(plan.options).items())},
        "device": device.split(":")[0],
        "seed": seed,
        "shards": [
            [layout.filename, layout.file_size, hashlib.sha256(layout.header).hexdigest()]
            for layout in plan.shards
        ],
        "inputs": inputs,
    }
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Journal:
    """The journal of one temporary folder; :meth:`record` is thread-safe. Shards are hashed
    ``chunk_bytes`` at a time."""

    def __init__(
        self, folder: Path, fingerprint: str, chunk_bytes: int = DEFAULT_POLICY.hash_chunk_bytes
    ) -> None:
        self.folder = Path(folder)
        self.path = self.folder / JOURNAL_NAME
        self.fingerprint = fingerprint
        self.chunk_bytes = chunk_bytes
        self.shards: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()

    # -- reading an earlier run's journal ---------------------------------------------------

    @staticmethod
    def read(folder: Path) -> dict[str, Any] | None:
        """The journal document in ``folder``, or None when absent or unreadable."""
        path = Path(folder) / JOURNAL_NAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            return None
        if (
            not isinstance(data, dict)
            or data.get("format") != _FORMAT
            or data.get("version") != _VERSION
            or not isinstance(data.get("fingerprint"), str)
            or not isinstance(data.get("shards"), dict)
        ):
            return None
        return data

    def adopt(
        self,
        previous: dict[str, Any],
        expected_sizes: dict[str, int],
        on_bad: Callable[[str, str], None],
    ) -> list[str]:
        """Keep the shards of ``previous`` (same fingerprint) that still verify; return them.

        ``expected_sizes`` maps each shard of the current plan to its size. A shard whose file
        is missing, has another size or another CRC-32 is reported to ``on_bad(filename,
        why)`` and left out, so it will be written again.
        """
        kept: list[str] = []
        for filename, entry in sorted(previous["shards"].items()):
            if filename not in expected_sizes or not isinstance(entry, dict):
                continue
            path = self.folder / filename
            size, digest = entry.get("size"), entry.get("crc32")
            try:
                actual = path.stat().st_size
            except OSError:
                on_bad(filename, "it is missing")
                continue
            if size != expected_sizes[filename] or actual != size:
                on_bad(filename, f"it has {actual} bytes instead of {expected_sizes[filename]}")
                continue
            try:
                ok = crc32_file(path, chunk_bytes=self.chunk_bytes) == digest
            except OSError as exc:
                on_bad(filename, f"it cannot be read ({exc.strerror or exc})")
                continue
            if not ok:
                on_bad(filename, "its checksum does not match the journal")
                continue
            self.shards[filename] = {"size": size, "crc32": digest}
            kept.append(filename)
        return kept

    # -- writing ---------------------------------------------------------------------------

    def record(self, filename: str) -> None:
        """Hash the finished shard ``filename`` and add it to the journal (atomically).

        After :meth:`stop_recording` a shard still being hashed is left out: the merge is
        about to be published, and a crash before that only means writing it once more."""
        path = self.folder / filename
        digest = crc32_file(path, self._stop, self.chunk_bytes)
        if digest is None:
            return
        entry = {"size": path.stat().st_size, "crc32": digest}
        with self._lock:
            self.shards[filename] = entry
            self._save()

    def stop_recording(self) -> None:
        """Make :meth:`record` calls in progress or to come return without recording."""
        self._stop.set()

    def save(self) -> None:
        """Write the journal as it stands (used when a run starts)."""
        with self._lock:
            self._save()

    def _save(self) -> None:
        doc = {
            "format": _FORMAT,
            "version": _VERSION,
            "fingerprint": self.fingerprint,
            "shards": dict(sorted(self.shards.items())),
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        # Atomic: after a crash the journal is the old one or the new one, never half of each.
        os.replace(tmp, self.path)
        fsync_dir(self.folder)

    def completed(self) -> list[str]:
        with self._lock:
            return sorted(self.shards)

    def discard(self) -> None:
        """Delete the journal file (before publishing: outputs never carry it)."""
        for p in (self.path, self.path.with_name(self.path.name + ".tmp")):
            try:
                p.unlink()
            except FileNotFoundError:
                pass

    def prune(self, keep: Iterable[str]) -> None:
        """Delete every file of the temporary folder except ``keep`` and the journal.

        Used when resuming (half-written shards and metadata from the earlier run go) and when
        a ``--resume`` run is interrupted (only shards the journal vouches for stay).
        """
        keep_names = set(keep) | {JOURNAL_NAME}
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return
        for entry in entries:
            if entry.name in keep_names:
                continue
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
