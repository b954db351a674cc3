"""What an extraction is asked to do: the rank rule and the module selection, checked once.

The rank of each module comes from one of three rules:

* a fixed rank ``rank`` (MergeKit's ``--max-rank``, default 128), capped by the matrix size;
* ``energy`` F: the smallest rank keeping at least F of the delta's squared Frobenius norm;
* ``max_error`` E: the smallest rank whose relative reconstruction error
  ``||delta - B A||_F / ||delta||_F`` is at most E. Since the truncated SVD of rank k leaves a
  residual of exactly ``||delta||_F^2 - sum(s_i^2, i <= k)``, this is the energy rule with
  ``F = 1 - E^2``.

With ``energy`` or ``max_error``, an explicit ``rank`` caps the rank chosen. ``sv_epsilon``
(MergeKit's absolute threshold) further drops singular values at or below it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

SvdMode = Literal["auto", "full", "randomized"]
SVD_MODES: tuple[SvdMode, ...] = ("auto", "full", "randomized")

__all__ = ["ExtractionOptions", "DEFAULT_RANK", "SVD_MODES", "SvdMode"]

DEFAULT_RANK = 128  # MergeKit's --max-rank default


@dataclass(frozen=True)
class ExtractionOptions:
    """Options of one extraction (the CLI flags, with MergeKit's spellings as aliases)."""

    rank: int | None = None
    energy: float | None = None
    max_error: float | None = None
    sv_epsilon: float = 0.0
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    save_modules: tuple[str, ...] = ()
    embed_lora: bool = False
    skip_undecomposable: bool = False
    distribute_scale: bool = True
    device: str = "cpu"
    seed: int = 0
    svd: SvdMode = "auto"

    @property
    def target_energy(self) -> float | None:
        """The energy fraction the rank rule asks for (None: a fixed rank)."""
        if self.energy is not None:
            return self.energy
        if self.max_error is not None:
            return 1.0 - self.max_error**2
        return None

    @property
    def max_rank(self) -> int | None:
        """The largest rank allowed: ``rank``, or 128 for a fixed rank, or none (energy rules
        without ``rank``)."""
        if self.rank is not None:
            return self.rank
        return None if self.target_energy is not None else DEFAULT_RANK

    def check(self) -> list[str]:
        """Every problem with these options, as one line each (empty: fine)."""
        problems = []
        if self.energy is not None and self.max_error is not None:
            problems.append(
                "--energy and --max-error are two rank rules; give one of them "
                "(--rank may cap either)"
            )
        if self.rank is not None and self.rank < 1:
            problems.append(f"--rank must be a positive integer, got {self.rank}")
        if self.energy is not None and not (0.0 < self.energy <= 1.0):
            problems.append(f"--energy must be in (0, 1], got {self.energy}")
        if self.max_error is not None and not (0.0 <= self.max_error < 1.0):
            problems.append(f"--max-error must be in [0, 1), got {self.max_error}")
        if not math.isfinite(self.sv_epsilon) or self.sv_epsilon < 0:
            problems.append(f"--sv-epsilon must be a number >= 0, got {self.sv_epsilon}")
        if self.svd not in SVD_MODES:
            problems.append(f"--svd must be one of {', '.join(SVD_MODES)}, got '{self.svd}'")
        for flag, patterns in (("--include", self.include), ("--exclude", self.exclude)):
            for pattern in patterns:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    problems.append(f"{flag} '{pattern}' is not a valid regular expression ({exc})")
        return problems

    def selects(self, module: str) -> bool:
        """Whether ``module`` passes ``include`` (any match; none given: all) and ``exclude``."""
        if self.include and not any(re.search(p, module) for p in self.include):
            return False
        return not any(re.search(p, module) for p in self.exclude)
