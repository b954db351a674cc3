"""Helpers for the reliability tests: a model family, CLI runs, and folder snapshots."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from meldkit.cli.main import main
from meldkit.testing import make_model_family


@dataclass
class Family:
    """A 4-layer float32 Llama base with two fine-tunes (session-wide, never written to)."""

    base: Path
    ft1: Path
    ft2: Path

    @property
    def folders(self) -> list[Path]:
        return [self.base, self.ft1, self.ft2]


def make_family(root: Path) -> Family:
    base, (ft1, ft2) = make_model_family(root, "llama", n=2, num_layers=4, dtype="float32")
    return Family(base, ft1, ft2)


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: object) -> CliResult:
    """Run ``meldkit *argv`` in this process (exactly what the console script does)."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return CliResult(code, captured.out, captured.err)


def linear_recipe(*models: Path, weights: Iterable[float] | None = None, extra: str = "") -> str:
    ws = list(weights) if weights is not None else [1.0] * len(models)
    body = "".join(f"  - model: {m}\n    parameters: {{weight: {w}}}\n" for m, w in zip(models, ws))
    return f"merge_method: linear\nmodels:\n{body}{extra}"


def write_recipe(folder: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def snapshot(*folders: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``folders`` with its size and SHA-256 (to prove inputs are untouched)."""
    state: dict[str, tuple[int, str]] = {}
    for folder in folders:
        for root, _, files in os.walk(folder):
            for name in files:
                p = Path(root) / name
                data = p.read_bytes()
                state[str(p)] = (len(data), hashlib.sha256(data).hexdigest())
    return state


def leftovers(parent: Path) -> list[str]:
    """meldkit's temporary folders in ``parent`` (there must be none after a failure)."""
    return sorted(
        p.name for p in parent.iterdir() if p.name.endswith((".meldkit-partial", ".meldkit-old"))
    )


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file of an output folder, for byte-for-byte comparisons."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
